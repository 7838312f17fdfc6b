"""A broken store is never replaced silently (issue 12, defect 1; invariant 7).

Each store here holds changes PostgreSQL lacks (written during an outage, never mirrored) when a
page of it is destroyed. Provisioning must save to PostgreSQL whatever its change log still
holds, name what it cannot, and only then restore.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from tests.conftest import dump_store, make_settings, mirror_once, new_store, proxied
from tests.sentry_capture import CapturingTransport, sentry_events  # noqa: F401
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.store.leftovers import replaced_copies
from wapool.store.mirror import Mirror
from wapool.store.provision import StoreUnavailable, provision
from wapool.store.rescue import read_report
from wapool.store.snapshot import snapshot_cache
from wapool.store.verify import verify
from wapool.store.working_store import connect
from wapool.testing.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(120)
COMPANY = "962302"

Pending = dict[tuple[str, str], tuple[int, str | None]]


async def _store_owing_changes(
    db: Database, database_url: str, template: Path, state: Path, pending: int = 150
) -> tuple[Path, Pending]:
    """A store mirrored once, then written to while PostgreSQL was away; returns the last
    (sequence, image) of every key PostgreSQL has not seen."""
    add_companies(database_url, COMPANY)
    path = new_store(template, state, COMPANY)
    writer = writer_for(path, 21)
    for _ in range(200):
        writer.random_transaction()
    await mirror_once(db, COMPANY, path)
    for _ in range(pending):
        writer.random_transaction()
    writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    owed: Pending = {}
    for seq, table, op, key, image in writer.conn.execute(
        "SELECT seq, tbl, op, pk, img FROM wapool_changelog ORDER BY seq"
    ):
        owed[(table, key)] = (seq, image if op == "U" else None)
    writer.conn.close()
    return path, owed


def _leaf_pages(path: Path, table: str) -> list[int]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,),
        ).fetchall()
        return [r[0] for r in rows]


def _smash(path: Path, page: int) -> None:
    with closing(sqlite3.connect(path)) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    with open(path, "r+b") as file:
        file.seek((page - 1) * size)
        file.write(b"\x55" * size)


def _postgres_rows(database_url: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tbl, pk, image FROM store_rows WHERE company_id = %s", (COMPANY,)
        ).fetchall()
    return {(t, k): i for t, k, i in rows}


async def test_a_corrupt_store_gives_its_pending_changes_to_postgres_before_it_is_replaced(
    db: Database,
    database_url: str,
    whatsmeow_template: Path,
    tmp_path: Path,
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    path, _ = await _store_owing_changes(db, database_url, whatsmeow_template, tmp_path)
    with closing(connect(path)) as conn:
        owed_entries = conn.execute("SELECT seq FROM wapool_changelog").fetchall()
    expected = dump_store(path)
    _smash(path, _leaf_pages(path, "whatsmeow_sessions")[0])  # the change log is intact

    result = await provision(db, tmp_path, COMPANY)

    assert result.action == "restored-postgres"
    assert result.report is not None
    assert result.report.complete
    assert result.report.saved == len(owed_entries)
    assert dump_store(path) == expected  # nothing the outage wrote is gone
    assert (await verify(db, path, COMPANY)).equal
    [kept] = replaced_copies(tmp_path)
    assert kept.report is not None
    assert read_report(kept.report).complete
    assert sentry_events.messages("store_salvaged")


async def test_what_a_damaged_change_log_cannot_give_is_named(
    db: Database,
    database_url: str,
    whatsmeow_template: Path,
    tmp_path: Path,
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    path, owed = await _store_owing_changes(db, database_url, whatsmeow_template, tmp_path, 600)
    leaves = _leaf_pages(path, "wapool_changelog")
    assert len(leaves) > 3
    _smash(path, leaves[len(leaves) // 2])

    result = await provision(db, tmp_path, COMPANY)

    report = result.report
    assert report is not None
    assert not report.complete
    assert report.lost
    assert report.saved > 0
    assert sentry_events.messages("store_changes_unsaved")
    in_postgres = _postgres_rows(database_url)
    for key, (seq, image) in owed.items():
        named = any(a <= seq and (b is None or seq <= b) for a, b in report.lost)
        named = named or key in report.lost_keys
        assert in_postgres.get(key) == image or named, f"{key} silently lost"
    assert (await verify(db, path, COMPANY)).equal


async def test_during_an_outage_a_corrupt_store_owing_changes_waits_for_postgres(
    database_url: str, proxy: FaultProxy, whatsmeow_template: Path, tmp_path: Path
) -> None:
    settings = make_settings(proxied(database_url, proxy), tmp_path, db_connect_timeout_seconds=1,
                             db_pool_timeout_seconds=0.5, db_query_timeout_seconds=1)  # fmt: skip
    db = Database.from_settings(settings)
    await db.open(wait=True)
    cache = snapshot_cache(300, 64 << 20)
    add_companies(database_url, COMPANY)
    path = new_store(whatsmeow_template, tmp_path, COMPANY)
    writer = writer_for(path, 4)
    for _ in range(100):
        writer.random_transaction()
    mirror = Mirror(db, snapshots=cache, snapshot_every=0)
    mirror.add(COMPANY, path)
    assert await mirror.drain(30)  # a fresh snapshot is cached
    mirror.close()
    await proxy.refuse()
    for _ in range(100):
        writer.random_transaction()
    writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    writer.conn.close()
    expected = dump_store(path)
    _smash(path, _leaf_pages(path, "whatsmeow_sessions")[0])
    damaged = path.read_bytes()

    with pytest.raises(StoreUnavailable, match="waiting for it"):
        await provision(db, tmp_path, COMPANY, snapshots=cache)
    assert path.read_bytes() == damaged  # not replaced by the older snapshot

    await proxy.restore()
    for _ in range(100):
        try:
            result = await provision(db, tmp_path, COMPANY, snapshots=cache)
            break
        except StoreUnavailable:
            continue  # the pool reconnects within about a second
    assert result.action == "restored-postgres"
    assert dump_store(path) == expected
    await db.close()
