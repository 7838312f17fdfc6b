"""How fast does a pool serve again after an outage, and what does a blackhole do to it?

Compares psycopg_pool's defaults with wapool's pool (``wapool.db.pool``) on a throwaway
cluster: a real ``pg_ctl stop -m immediate`` lasting OUTAGE seconds, then the time from the
server's return to the first query served; and a blackholed link (fault proxy), the time a
query takes to fail. A client asks every 100 ms, each ask bounded by ASK_LIMIT seconds.

    python bench/pool_recovery.py [--outage 40]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from wapool.db.pool import Database
from wapool.devdb import Cluster, free_port
from wapool.settings import load_settings
from wapool.testing.fault_proxy import FaultProxy

ASK_LIMIT = 60.0
Ask = Callable[[], Awaitable[Any]]


async def _ask(ask: Ask) -> tuple[bool, float]:
    started = time.monotonic()
    try:
        await asyncio.wait_for(ask(), ASK_LIMIT)
    except Exception:
        return False, time.monotonic() - started
    return True, time.monotonic() - started


async def recovery(cluster: Cluster, ask: Ask, outage: float) -> float:
    assert (await _ask(ask))[0]
    cluster.stop("immediate")
    end = time.monotonic() + outage
    while time.monotonic() < end:
        await _ask(ask)
        await asyncio.sleep(0.1)
    await asyncio.to_thread(cluster.start)
    back = time.monotonic()
    while not (await _ask(ask))[0]:
        await asyncio.sleep(0.1)
    return time.monotonic() - back


async def blackhole(proxy: FaultProxy, ask: Ask) -> tuple[bool, float]:
    assert (await _ask(ask))[0]
    await proxy.blackhole()
    try:
        return await _ask(ask)
    finally:
        await proxy.restore()


def default_pool(url: str, _state: Path) -> tuple[AsyncConnectionPool[Any], Ask]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=2, open=False)

    async def ask() -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")

    return pool, ask


def wapool_pool(url: str, state: Path) -> tuple[AsyncConnectionPool[Any], Ask]:
    db = Database.from_settings(load_settings(None, database_url=url, state_dir=state))

    async def ask() -> None:
        await db.fetch("SELECT 1")

    return db.pool, ask


async def main(outage: float) -> None:
    root = Path(tempfile.mkdtemp(prefix="wapool-bench-pg-"))
    cluster = Cluster(root, free_port(), durable=False)
    cluster.start()
    cluster.ensure_database()
    url = cluster.url()
    rows = []
    try:
        for name, factory in (("psycopg_pool defaults", default_pool), ("wapool", wapool_pool)):
            async with FaultProxy("127.0.0.1", cluster.port) as proxy:
                proxied = url.replace(f":{cluster.port}/", f":{proxy.port}/")
                pool, ask = factory(proxied, root)
                await pool.open(wait=True)
                served_after = await recovery(cluster, ask, outage)
                ok, took = await blackhole(proxy, ask)
                await pool.close(timeout=1)
            if ok:
                hole = f"answered in {took:.2f} s"
            elif took < ASK_LIMIT - 1:
                hole = f"failed after {took:.2f} s"
            else:
                hole = f"still hanging after {ASK_LIMIT:.0f} s (cut off there)"
            rows.append((name, served_after, hole))
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
    print(f"\npool recovery (real pg_ctl stop -m immediate for {outage:.0f} s; blackholed link)")
    print(f"{'pool':<24} {'first query after return':>26}   blackholed query")
    for name, served_after, hole in rows:
        print(f"{name:<24} {served_after:>24.2f} s   {hole}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--outage", type=float, default=40.0)
    asyncio.run(main(parser.parse_args().outage))
