"""The mirror against a real PostgreSQL: convergence, outages, rejection of foreign copies."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import psycopg
import pytest

from tests.conftest import make_settings, new_store, proxied
from tests.sentry_capture import CapturingTransport, sentry_events  # noqa: F401
from wapool.clock import ManualClock
from wapool.db.pool import Database
from wapool.devdb import Cluster
from wapool.errors import DatabaseUnavailable
from wapool.store.mirror import Mirror
from wapool.store.verify import verify
from wapool.store.working_store import connect
from wapool.testing.fault_proxy import FaultProxy
from wapool.testing.whatsmeow_writes import WhatsmeowWriter

pytestmark = pytest.mark.timeout(120)


def add_companies(database_url: str, *ids: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for company_id in ids:
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (company_id,))


def writer_for(path: Path, seed: int) -> WhatsmeowWriter:
    writer = WhatsmeowWriter(connect(path), random.Random(seed))
    writer.pair()
    return writer


async def test_mirror_converges_for_many_companies(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    ids = [f"c{i}" for i in range(5)]
    add_companies(database_url, *ids)
    mirror = Mirror(db, max_rows_per_tick=40)
    writers = {}
    for n, company_id in enumerate(ids):
        path = new_store(whatsmeow_template, tmp_path, company_id)
        mirror.add(company_id, path)
        writers[company_id] = (path, writer_for(path, n))
    for _ in range(30):
        for _, writer in writers.values():
            writer.random_transaction()
        await mirror.tick()  # bounded ticks while writes go on
    assert await mirror.drain(timeout=30)
    for company_id, (path, writer) in writers.items():
        verdict = await verify(db, path, company_id)
        assert verdict.equal, verdict
        assert verdict.tables
        assert all(t.local_rows == t.postgres_rows for t in verdict.tables)
        writer.conn.close()
    assert mirror.stats.companies["c0"].pending_rows == 0
    mirror.close()


async def test_outage_loses_nothing_and_alerts_once(
    database_url: str,
    proxy: FaultProxy,
    whatsmeow_template: Path,
    tmp_path: Path,
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    add_companies(database_url, "962302")
    settings = make_settings(proxied(database_url, proxy), tmp_path, db_connect_timeout_seconds=1,
                             db_pool_timeout_seconds=0.5, db_query_timeout_seconds=1)  # fmt: skip
    db = Database.from_settings(settings)
    await db.open(wait=True)
    path = new_store(whatsmeow_template, tmp_path, "962302")
    writer = writer_for(path, 7)
    mirror = Mirror(db)
    mirror.add("962302", path)
    stop = asyncio.Event()
    task = asyncio.create_task(mirror.run(stop))
    try:
        assert await _eventually(lambda: mirror.stats.rows_applied > 0)
        await proxy.refuse()
        for mode in ("refuse", "cut", "blackhole"):
            if mode == "cut":
                await proxy.restore()
                proxy.cut()
                await proxy.refuse()
            elif mode == "blackhole":
                await proxy.blackhole()
            for _ in range(100):
                writer.random_transaction()
                await asyncio.sleep(0.005)
        assert mirror.stats.companies["962302"].pending_rows > 0
        assert not db.health.up
        await proxy.restore()
        assert await _eventually(lambda: mirror.stats.companies["962302"].pending_rows == 0, 30)
    finally:
        stop.set()
        await task
    verdict = await verify(db, path, "962302")
    assert verdict.equal, verdict
    assert len(sentry_events.messages("postgres_outage_fallback")) == 1
    recovered = sentry_events.messages("postgres_recovered")
    assert len(recovered) == 1
    assert recovered[0]["extra"]["rows_replayed"] >= 300
    assert recovered[0]["tags"]["company_id"] == "962302"
    writer.conn.close()
    mirror.close()
    await db.close()


async def test_copy_of_another_store_is_not_overwritten(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    add_companies(database_url, "962302")
    first = new_store(whatsmeow_template, tmp_path / "a", "962302")
    writer_for(first, 1).conn.close()
    mirror = Mirror(db)
    mirror.add("962302", first)
    assert await mirror.drain(10)
    mirror.close()
    # A second, unrelated store for the same company (e.g. a stray host) must not win.
    second = new_store(whatsmeow_template, tmp_path / "b", "962302")
    writer_for(second, 2).conn.close()
    intruder = Mirror(db)
    intruder.add("962302", second)
    await intruder.tick()
    assert intruder.stats.companies["962302"].rejected
    assert (await verify(db, first, "962302")).equal
    intruder.close()


async def _eventually(predicate: object, timeout: float = 10) -> bool:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


def test_sqlite_busy_timeout_is_set(whatsmeow_template: Path, tmp_path: Path) -> None:
    path = new_store(whatsmeow_template, tmp_path, "x")
    wal = path.with_name(path.name + "-wal")
    conn = connect(path)
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (10_000,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert wal.exists()
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")
    assert not wal.exists()  # the last connection to close checkpoints and removes the log


async def test_three_minute_server_outage_under_continuous_writes(
    database_url: str,
    running_cluster: Cluster,
    whatsmeow_template: Path,
    tmp_path: Path,
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    """A real ``pg_ctl stop -m immediate``; the three minutes pass on a travelled clock."""
    add_companies(database_url, "962302")
    settings = make_settings(database_url, tmp_path, db_pool_timeout_seconds=0.2,
                             db_connect_timeout_seconds=1, db_reconnect_timeout_seconds=0.5)  # fmt: skip
    db = Database.from_settings(settings)
    await db.open(wait=True)
    clock = ManualClock()
    path = new_store(whatsmeow_template, tmp_path, "962302")
    writer = writer_for(path, 9)
    mirror = Mirror(db, clock=clock)
    mirror.add("962302", path)
    assert await mirror.drain(10)
    try:
        running_cluster.stop("immediate")
        written = 0
        for second in range(180):
            writer.random_transaction()
            written += 1
            clock.advance(1)
            if second % 15 == 0:
                with pytest.raises(DatabaseUnavailable):
                    await mirror.tick()
        pending = mirror.stats.companies["962302"].pending_rows
        assert pending >= written  # every change kept locally
        running_cluster.start()
        assert await mirror.drain(30)
        verdict = await verify(db, path, "962302")
        assert verdict.equal, verdict
    finally:
        writer.conn.close()
        mirror.close()
        await db.close()
    assert len(sentry_events.messages("postgres_outage_fallback")) == 1
    (recovered,) = sentry_events.messages("postgres_recovered")
    assert recovered["extra"]["outage_seconds"] >= 179  # from the first failed write-back
    assert recovered["extra"]["rows_replayed"] >= written
    assert recovered["level"] == "info"


async def test_concurrent_drain_and_loop_apply_each_change_once(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    """A drain (shutdown, verify) racing the running loop must not double-send a prefix."""
    add_companies(database_url, *[f"r{i}" for i in range(10)])
    mirror = Mirror(db, poll_interval=0)
    writers = []
    for i in range(10):
        path = new_store(whatsmeow_template, tmp_path, f"r{i}")
        mirror.add(f"r{i}", path)
        writers.append((f"r{i}", path, writer_for(path, i)))
    stop = asyncio.Event()
    loop_task = asyncio.create_task(mirror.run(stop))
    for _ in range(20):
        for _, _, writer in writers:
            writer.random_transaction()
        await asyncio.gather(mirror.drain(5), mirror.drain(5))
    stop.set()
    await loop_task
    assert mirror.stats.failures == 0
    for company, path, writer in writers:
        assert (await verify(db, path, company)).equal
        writer.conn.close()
    mirror.close()


async def test_low_disk_warns_once(
    db: Database,
    database_url: str,
    whatsmeow_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    import wapool.store.disk_watch as disk_watch_module

    add_companies(database_url, "962302")
    path = new_store(whatsmeow_template, tmp_path, "962302")
    mirror = Mirror(db, state_dir=tmp_path)
    mirror.add("962302", path)
    await mirror.tick()
    assert sentry_events.messages("state_dir_low_on_space") == []
    # Pretend the threshold is above what this disk has free.
    monkeypatch.setattr(disk_watch_module, "LOW_DISK_BYTES", 1 << 62)
    for _ in range(3):
        await mirror.tick()
    (warning,) = sentry_events.messages("state_dir_low_on_space")
    assert warning["level"] == "warning"
    assert warning["extra"]["free_mb"] > 0
    mirror.close()


async def test_logout_keeps_a_tombstone_and_alerts(
    db: Database,
    database_url: str,
    whatsmeow_template: Path,
    tmp_path: Path,
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    add_companies(database_url, "962302")
    path = new_store(whatsmeow_template, tmp_path, "962302")
    writer = writer_for(path, 31)
    for _ in range(30):
        writer.random_transaction()
    mirror = Mirror(db)
    mirror.add("962302", path)
    assert await mirror.drain(10)
    with psycopg.connect(database_url) as conn:
        before = conn.execute(
            "SELECT tbl, pk, image FROM store_rows WHERE company_id = '962302' ORDER BY 1, 2"
        ).fetchall()
    writer.logout()  # whatsmeow deletes the device; the keys cascade away
    assert await mirror.drain(10)
    assert (await verify(db, path, "962302")).equal
    with psycopg.connect(database_url) as conn:
        tomb = conn.execute(
            "SELECT tbl, pk, image FROM store_tombstones WHERE company_id = '962302' ORDER BY 1, 2"
        ).fetchall()
        left = conn.execute(
            "SELECT count(*) FROM store_rows WHERE company_id = '962302' AND tbl = 'whatsmeow_device'"
        ).fetchone()
    assert tomb == before  # the copy as it was, device and keys included
    assert left == (0,)
    assert len(sentry_events.messages("device_deleted_tombstone_kept")) == 1
    writer.conn.close()
    mirror.close()
