"""Issue 13's freshness check, on real stores: a working store older than the PostgreSQL copy is
never driven (restored first); a PostgreSQL copy older than the working store is never restored
over it (kept; the mirror catches up). Both decisions are logged with their sequences."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.conftest import dump_store, mirror_once, new_store
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.store import pg_copy
from wapool.store.provision import provision
from wapool.store.verify import verify
from wapool.store.working_store import connect

pytestmark = pytest.mark.timeout(120)
COMPANY = "f1"


def _freshness(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    records = [r for r in caplog.records if r.getMessage() == "store_freshness"]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    return records[0]


async def test_a_copy_older_than_the_store_is_never_restored_over_it(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    add_companies(database_url, COMPANY)
    path = new_store(whatsmeow_template, tmp_path, COMPANY)
    writer = writer_for(path, 3)
    for _ in range(20):
        writer.random_transaction()
    await mirror_once(db, COMPANY, path)
    for _ in range(20):  # not mirrored yet: the store is ahead of its copy
        writer.random_transaction()
    writer.conn.close()
    before = dump_store(path)
    meta = await pg_copy.fetch_meta(db, COMPANY)
    assert meta is not None

    with caplog.at_level(logging.INFO):
        result = await provision(db, tmp_path, COMPANY)
    assert result.action == "kept"
    assert dump_store(path) == before
    record = _freshness(caplog)
    assert record.action == "keep"  # type: ignore[attr-defined]
    assert record.postgres_seq == meta.applied_seq  # type: ignore[attr-defined]
    assert record.local_seq > meta.applied_seq  # type: ignore[attr-defined]
    await mirror_once(db, COMPANY, path)
    assert (await verify(db, path, COMPANY)).equal


async def test_a_store_older_than_the_copy_is_never_driven(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """This host was away while another drove the company: its store is of the old line."""
    add_companies(database_url, COMPANY)
    path = new_store(whatsmeow_template, tmp_path / "here", COMPANY)
    writer = writer_for(path, 4)
    for _ in range(20):
        writer.random_transaction()
    writer.conn.close()
    await mirror_once(db, COMPANY, path)
    elsewhere = await provision(db, tmp_path / "there", COMPANY)  # the other host restores
    other = writer_for(elsewhere.path, 5)
    other.random_transaction()
    other.conn.close()
    await mirror_once(db, COMPANY, elsewhere.path)
    with connect(path) as conn:  # meanwhile this host's store moved on, on the old line
        conn.execute("UPDATE whatsmeow_device SET push_name = 'stale'")

    with caplog.at_level(logging.INFO):
        result = await provision(db, tmp_path / "here", COMPANY)
    assert result.action == "restored-postgres"
    record = _freshness(caplog)
    assert record.action == "restore"  # type: ignore[attr-defined]
    assert "store identity" in record.reason  # type: ignore[attr-defined]
    assert dump_store(result.path) == dump_store(elsewhere.path)
    assert list((tmp_path / "here" / COMPANY).glob("store.db.replaced-*"))
