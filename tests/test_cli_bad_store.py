"""``wapool status`` and ``verify`` with one broken store among sound ones (issue 12, defect 3):
one bad store is one bad row, and looking at a store never changes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import mirror_once, new_store, run_cli
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.settings import Settings

pytestmark = pytest.mark.timeout(120)


async def _two_stores(db: Database, database_url: str, template: Path, state: Path) -> Path:
    add_companies(database_url, "good", "bad")
    for company in ("good", "bad"):
        path = new_store(template, state, company)
        writer = writer_for(path, 5)
        for _ in range(50):
            writer.random_transaction()
        writer.conn.close()
        await mirror_once(db, company, path)
    bad = state / "bad" / "store.db"
    os.truncate(bad, 8192)  # the header survives; the tables do not
    return bad


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


async def test_one_bad_store_is_one_bad_row(
    db: Database, database_url: str, whatsmeow_template: Path, settings: Settings, tmp_path: Path
) -> None:
    bad = await _two_stores(db, database_url, whatsmeow_template, settings.state_dir)
    before = _files(bad.parent)
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(settings.state_dir)}

    status = run_cli("status", "--json", env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    rows = {r["company"]: r for r in json.loads(status.stdout)}
    assert rows["good"]["pending_rows"] == 0
    assert rows["good"]["store_error"] is None
    assert "malformed" in rows["bad"]["store_error"]
    table = run_cli("status", env=env, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    bad_line = next(line for line in table.stdout.splitlines() if line.startswith("bad "))
    assert "unreadable" in bad_line
    assert "store:" in bad_line

    verified = run_cli("verify", env=env, cwd=tmp_path)
    assert verified.returncode == 1
    assert "good: EQUAL" in verified.stdout
    assert "bad: UNREADABLE (" in verified.stdout
    assert "internal error" not in verified.stderr
    assert _files(bad.parent) == before  # read-only: nothing created, converted or fixed
