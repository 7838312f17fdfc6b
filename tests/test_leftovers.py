"""Files with private keys left beside a store (issue 12, defect 8): temporaries never outlive
the restore or export that made them, and replaced stores are kept for the retention period,
listed, then pruned by the cleanup."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import mirror_once, new_store, run_cli
from tests.test_mirror import add_companies, writer_for
from wapool.cleanup.executor import CleanupRun
from wapool.cleanup.policy import RetentionPolicy
from wapool.db.pool import Database
from wapool.settings import Settings
from wapool.store import export_file, pg_copy, restore, transfer
from wapool.store.provision import provision

pytestmark = pytest.mark.timeout(120)
COMPANY = "962302"


async def _mirrored(db: Database, database_url: str, template: Path, state: Path) -> Path:
    add_companies(database_url, COMPANY)
    path = new_store(template, state, COMPANY)
    writer = writer_for(path, 8)
    for _ in range(40):
        writer.random_transaction()
    writer.conn.close()
    await mirror_once(db, COMPANY, path)
    return path


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _no_temporaries(directory: Path) -> None:
    leftovers = [n for n in _names(directory) if "restoring" in n or ".partial" in n]
    assert leftovers == [], leftovers


async def test_restores_leave_no_temporaries_even_when_they_fail(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = await _mirrored(db, database_url, whatsmeow_template, tmp_path)
    meta = await pg_copy.fetch_meta(db, COMPANY)
    assert meta is not None
    rows = await pg_copy.fetch_rows(db, COMPANY)

    restore.build_from_rows(path, meta, rows)
    _no_temporaries(path.parent)
    with pytest.raises(KeyError):
        restore.build_from_rows(path, meta, [*rows, ("whatsmeow_nope", '["x"]', '["y"]')])
    _no_temporaries(path.parent)
    # A temporary of a restore whose process died is gone at the next provisioning.
    dead = path.with_name("store.db.restoring-999999999")
    for suffix in ("", "-wal", "-shm"):
        dead.with_name(dead.name + suffix).write_bytes(b"private keys")
    await provision(db, tmp_path, COMPANY)
    _no_temporaries(path.parent)


async def test_exports_leave_no_partial_files_even_when_they_fail(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    await _mirrored(db, database_url, whatsmeow_template, tmp_path / "state")
    out = tmp_path / "exports"
    out.mkdir()
    await transfer.export_company(db, COMPANY, out / "good.wapool")
    assert _names(out) == ["good.wapool"]
    meta = await pg_copy.fetch_meta(db, COMPANY)
    assert meta is not None
    with pytest.raises(KeyError):
        export_file.write_export(
            out / "bad.wapool", COMPANY, meta, [("whatsmeow_nope", "[]", "[]")]
        )
    assert _names(out) == ["good.wapool"]


async def test_replaced_stores_are_listed_then_pruned_after_the_retention_period(
    db: Database,
    database_url: str,
    whatsmeow_template: Path,
    settings: Settings,
    tmp_path: Path,
) -> None:
    state = settings.state_dir
    path = await _mirrored(db, database_url, whatsmeow_template, state)
    meta = await pg_copy.fetch_meta(db, COMPANY)
    assert meta is not None
    recent = restore.build_from_rows(path, meta, await pg_copy.fetch_rows(db, COMPANY))
    assert recent is not None
    old = path.with_name("store.db.replaced-20200101T000000Z")
    old.write_bytes(recent.read_bytes())
    old.with_name(old.name + ".salvage.json").write_text(
        json.dumps({"company_id": COMPANY, "kept_as": old.name, "reason": "working store corrupt",
                    "saved": 3, "lost": [[41, 57]], "lost_keys": [], "error": None})
    )  # fmt: skip
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(state)}

    status = run_cli("status", "--json", env=env, cwd=tmp_path)
    kept = json.loads(status.stdout)[0]["replaced_stores"]
    assert [k["file"] for k in kept] == [old.name, recent.name]
    assert "41-57" in kept[0]["unsaved"]
    doctor = run_cli("doctor", env=env, cwd=tmp_path)
    line = next(x for x in doctor.stdout.splitlines() if "store leftovers" in x)
    assert line.startswith("FAIL")
    assert "41-57" in line

    now = datetime.now(UTC)
    result = await CleanupRun(db, RetentionPolicy.build(30), state).run(now)
    assert result.replaced_pruned == [f"{COMPANY}/{old.name}"]
    assert [n for n in _names(path.parent) if "replaced" in n] == [recent.name]
    later = await CleanupRun(db, RetentionPolicy.build(30), state).run(now + timedelta(days=31))
    assert later.replaced_pruned == [f"{COMPANY}/{recent.name}"]
    assert _names(path.parent) == ["store.db"]
    doctor = run_cli("doctor", env=env, cwd=tmp_path)
    assert "OK    store leftovers: no replaced stores kept" in doctor.stdout
    assert os.stat(path).st_mode & 0o777 == 0o600
