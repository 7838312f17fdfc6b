"""The pool against real outages: a killed server, and a proxy that cuts, refuses or swallows.

Bounds asserted here are the configured ones (defaults): a failing query gives up within the
pool timeout plus the connection check, and the first query after the server returns is served
within about a second. Figures in docs/postgresql.md come from ``make bench`` (bench/pool_recovery.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import make_settings, proxied
from wapool.db.pool import Database
from wapool.devdb import Cluster
from wapool.errors import DatabaseUnavailable
from wapool.settings import Settings
from wapool.testing.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(90)

#: How long after the server's return the first query may take (the bound docs/postgresql.md states).
RECOVERY_BOUND = 1.6
OUTAGE = 5.0  # longer than the reconnect timeout, so the pool has given up its attempts


def _failure_bound(settings: Settings) -> float:
    """Worst case for one failing call: a hung connection check, then the pool wait, + slack."""
    return settings.db_connect_timeout_seconds + settings.db_pool_timeout_seconds + 1.0


@pytest.fixture
async def proxied_db(
    database_url: str, proxy: FaultProxy, tmp_path: Path
) -> AsyncIterator[Database]:
    settings = make_settings(proxied(database_url, proxy), tmp_path)
    db = Database.from_settings(settings)
    await db.open(wait=True)
    yield db
    await db.close()


@pytest.fixture
async def direct_db(settings: Settings) -> AsyncIterator[Database]:
    db = Database.from_settings(settings)
    await db.open(wait=True)
    yield db
    await db.close()


async def _select_one(db: Database) -> None:
    assert await db.fetch("SELECT 1") == [(1,)]


async def _fail_during(db: Database, seconds: float, bound: float) -> int:
    """Query in a loop while the outage lasts; every call must fail, and fail within bound."""
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            await _select_one(db)
        assert time.monotonic() - started <= bound
        failures += 1
        await asyncio.sleep(0.1)
    assert not db.health.up
    return failures


async def _seconds_to_first_success(db: Database, back_at: float, limit: float = 30.0) -> float:
    while time.monotonic() - back_at < limit:
        try:
            await _select_one(db)
        except DatabaseUnavailable:
            await asyncio.sleep(0.05)
            continue
        assert db.health.up
        return time.monotonic() - back_at
    raise AssertionError(f"no query served within {limit} s of recovery")


async def test_recovers_after_real_server_kill(
    direct_db: Database, running_cluster: Cluster, settings: Settings
) -> None:
    await _select_one(direct_db)
    running_cluster.stop("immediate")
    assert await _fail_during(direct_db, OUTAGE, _failure_bound(settings)) >= 2
    await asyncio.to_thread(running_cluster.start)
    assert await _seconds_to_first_success(direct_db, time.monotonic()) <= RECOVERY_BOUND


async def test_recovers_after_refused_connections(proxied_db: Database, proxy: FaultProxy) -> None:
    await _select_one(proxied_db)
    await proxy.refuse()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        await _select_one(proxied_db)
    # Nothing to wait for but the pool timeout (2 s by default).
    assert time.monotonic() - started < proxied_db.pool.timeout + 0.5
    await _fail_during(proxied_db, OUTAGE, 5.0)
    await proxy.restore()
    assert await _seconds_to_first_success(proxied_db, time.monotonic()) <= RECOVERY_BOUND


async def test_cut_connections_are_replaced_at_once(
    proxied_db: Database, proxy: FaultProxy
) -> None:
    for _ in range(3):
        await asyncio.gather(*(_select_one(proxied_db) for _ in range(3)))
        assert proxy.live_connections >= 1
        proxy.cut()
        assert proxy.live_connections == 0
        started = time.monotonic()
        await _select_one(proxied_db)  # the broken connection fails its check and is replaced
        assert time.monotonic() - started <= RECOVERY_BOUND


async def test_blackhole_fails_fast_and_recovers(
    proxied_db: Database, proxy: FaultProxy, tmp_path: Path
) -> None:
    await _select_one(proxied_db)
    await proxy.blackhole()
    bound = _failure_bound(make_settings(None, tmp_path))
    await _fail_during(proxied_db, OUTAGE, bound)
    await proxy.restore()
    assert await _seconds_to_first_success(proxied_db, time.monotonic()) <= RECOVERY_BOUND


async def test_connections_stay_within_pool_size(proxied_db: Database, proxy: FaultProxy) -> None:
    await asyncio.gather(*(_select_one(proxied_db) for _ in range(50)))
    assert proxy.accepted <= proxied_db.pool.max_size
