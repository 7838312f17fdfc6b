"""Provisioning and restore on real stores: from PostgreSQL, from the cached snapshot during an
outage, and the clear failure after the TTL. neonize itself checks the restored device."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from tests.conftest import dump_store, make_settings, mirror_once, new_store, proxied, wait_until_up
from tests.test_mirror import add_companies, writer_for
from wapool.clock import ManualClock
from wapool.db.pool import Database
from wapool.store.leftovers import replaced_copies
from wapool.store.mirror import Mirror
from wapool.store.provision import StoreUnavailable, provision
from wapool.store.snapshot import snapshot_cache
from wapool.store.verify import verify
from wapool.store.working_store import connect
from wapool.testing.fault_proxy import FaultProxy
from wapool.whatsapp.neonize_store import create_schema

pytestmark = pytest.mark.timeout(120)


async def _mirrored_store(
    db: Database, database_url: str, template: Path, state: Path, transactions: int = 200
) -> Path:
    add_companies(database_url, "962302")
    path = new_store(template, state, "962302")
    writer = writer_for(path, 11)
    for _ in range(transactions):
        writer.random_transaction()
    writer.conn.close()
    await mirror_once(db, "962302", path)
    return path


async def test_missing_store_is_restored_as_the_same_device(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = await _mirrored_store(db, database_url, whatsmeow_template, tmp_path)
    before = dump_store(path)
    devices_before = create_schema([path])[path]
    assert len(devices_before) == 1
    path.unlink()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)

    result = await provision(db, tmp_path, "962302")
    assert (result.action, result.reason) == ("restored-postgres", "working store missing")
    assert dump_store(path) == before
    assert create_schema([path])[path] == devices_before  # whatsmeow loads the same device
    assert (await verify(db, path, "962302")).equal
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"


async def test_corrupt_store_is_detected_restored_and_kept_aside(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = await _mirrored_store(db, database_url, whatsmeow_template, tmp_path)
    before = dump_store(path)
    conn = connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    rng = random.Random(5)
    for offset in rng.sample(range(4096, len(data)), 200):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))

    result = await provision(db, tmp_path, "962302")
    assert result.action == "restored-postgres"
    assert result.reason.startswith("working store corrupt")
    assert dump_store(path) == before
    [kept] = replaced_copies(tmp_path)  # with its -wal/-shm and salvage report, if any
    assert kept.path.read_bytes() == bytes(data)


async def test_stale_store_is_restored(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = await _mirrored_store(db, database_url, whatsmeow_template, tmp_path, 50)
    conn = connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    old = tmp_path / "old.db"
    shutil.copyfile(path, old)
    writer = writer_for(path, 12)  # more writes, mirrored: PostgreSQL moves ahead
    for _ in range(50):
        writer.random_transaction()
    writer.conn.close()
    await mirror_once(db, "962302", path)
    current = dump_store(path)
    path.with_name("store.db-wal").unlink(missing_ok=True)
    path.with_name("store.db-shm").unlink(missing_ok=True)
    shutil.copyfile(old, path)  # an operator restored an old disk backup

    result = await provision(db, tmp_path, "962302")
    assert result.action == "restored-postgres"
    assert "behind" in result.reason
    assert dump_store(path) == current


async def test_outage_uses_cached_snapshot_within_ttl_then_fails_clearly(
    database_url: str, proxy: FaultProxy, whatsmeow_template: Path, tmp_path: Path
) -> None:
    settings = make_settings(proxied(database_url, proxy), tmp_path, db_connect_timeout_seconds=1,
                             db_pool_timeout_seconds=0.5, db_query_timeout_seconds=1)  # fmt: skip
    db = Database.from_settings(settings)
    await db.open(wait=True)
    clock = ManualClock()
    cache = snapshot_cache(300, 64 << 20, clock)
    add_companies(database_url, "962302")
    path = new_store(whatsmeow_template, tmp_path, "962302")
    writer = writer_for(path, 3)
    for _ in range(100):
        writer.random_transaction()
    writer.conn.close()
    mirror = Mirror(db, snapshots=cache, clock=clock, snapshot_every=0)
    mirror.add("962302", path)
    assert await mirror.drain(30)
    mirror.close()
    before = dump_store(path)

    await proxy.refuse()
    path.unlink()
    clock.advance(299)
    result = await provision(db, tmp_path, "962302", snapshots=cache)
    assert result.action == "restored-cache"
    assert dump_store(path) == before

    path.unlink()
    clock.advance(2)
    with pytest.raises(StoreUnavailable, match="no cached snapshot is younger than the cache TTL"):
        await provision(db, tmp_path, "962302", snapshots=cache)
    await proxy.restore()
    await wait_until_up(db)  # as the keeper would, it retries until PostgreSQL answers
    result = await provision(db, tmp_path, "962302", snapshots=cache)
    assert result.action == "restored-postgres"
    await db.close()


async def test_new_company_gets_a_fresh_store_and_corrupt_without_copy_is_refused(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    add_companies(database_url, "fresh", "broken")
    result = await provision(db, tmp_path, "fresh")
    assert result.action == "created"
    assert create_schema([result.path])[result.path] == []

    broken = tmp_path / "broken" / "store.db"
    broken.parent.mkdir(mode=0o700)
    broken.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="PostgreSQL holds no copy"):
        await provision(db, tmp_path, "broken")
    assert broken.read_bytes() == b"this is not a database" * 100  # nothing destroyed
