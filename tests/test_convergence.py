"""Invariants 1 and 2 under generated histories.

Each case is a seeded random history for a fresh company: whatsmeow-shaped transactions
(including logouts and re-pairing), mirror ticks, crashes of the mirror at its most delicate
points (after reading, after the PostgreSQL commit but before trimming, while trimming), and
PostgreSQL outages (proxy refuse, cut and blackhole; in some cases a real
``pg_ctl stop -m immediate``). After each history the mirror restarts, drains, and ``verify``
must find the PostgreSQL copy equal to the working store.

``make test`` runs 200 cases; ``WAPOOL_CONVERGENCE_CASES=2000`` runs more (the slow profile).
The real SIGKILL of a mirroring process is in ``test_kill.py``.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import make_settings, new_store, proxied
from wapool.db.pool import Database
from wapool.devdb import Cluster
from wapool.errors import DatabaseUnavailable
from wapool.store.mirror import Mirror
from wapool.store.verify import verify
from wapool.store.working_store import connect
from wapool.testing.fault_proxy import FaultProxy
from wapool.testing.whatsmeow_writes import WhatsmeowWriter

CASES = int(os.environ.get("WAPOOL_CONVERGENCE_CASES", "200"))
CHUNKS = 10
PG_KILL_EVERY = 40  # one case in this many also stops the real server


class Crash(Exception):
    """A simulated process death at a fault point."""


@pytest.fixture
async def rig(
    database_url: str, proxy: FaultProxy, tmp_path: Path
) -> AsyncIterator[tuple[Database, FaultProxy, str]]:
    settings = make_settings(
        proxied(database_url, proxy), tmp_path, db_connect_timeout_seconds=1,
        db_pool_timeout_seconds=0.3, db_query_timeout_seconds=1, db_reconnect_timeout_seconds=0.5,
    )  # fmt: skip
    db = Database.from_settings(settings)
    await db.open(wait=True)
    yield db, proxy, database_url
    await db.close()


async def _run_case(
    seed: int, db: Database, proxy: FaultProxy, cluster: Cluster, template: Path, state: Path
) -> None:
    rng = random.Random(seed)
    company = f"case-{seed}"
    path = new_store(template, state, company)
    writer = WhatsmeowWriter(connect(path), rng)
    writer.pair()
    mirror = Mirror(db, max_rows_per_tick=rng.choice([5, 50, 50_000]))
    mirror.add(company, path)
    kill_pg_at = rng.randrange(20) if seed % PG_KILL_EVERY == 0 else -1
    try:
        for step in range(rng.randrange(8, 25)):
            op = rng.choices(
                ["write", "tick", "crash", "refuse", "cut", "blackhole", "restore", "logout"],
                weights=[35, 30, 12, 5, 5, 1, 10, 2],
            )[0]
            if step == kill_pg_at:
                cluster.stop("immediate")
                op = "write"
            if op == "write":
                for _ in range(rng.randrange(1, 6)):
                    writer.random_transaction()
            elif op == "logout":
                writer.logout()
                writer.pair()
            elif op in ("tick", "crash"):
                if op == "crash":
                    point = rng.choice(["collected", "applied", "trimming"])

                    def fault(at: str, point: str = point) -> None:
                        if at == point:
                            raise Crash(at)

                    mirror.fault = fault
                with contextlib.suppress(DatabaseUnavailable, Crash):
                    await mirror.tick()
                if op == "crash":  # the process died: a new mirror starts from scratch
                    mirror.close()
                    mirror = Mirror(db, max_rows_per_tick=rng.choice([5, 50_000]))
                    mirror.add(company, path)
            elif op == "refuse":
                await proxy.refuse()
            elif op == "cut":
                proxy.cut()
            elif op == "blackhole":
                await proxy.blackhole()
            else:
                await proxy.restore()
        await proxy.restore()
        cluster.start()
        mirror.close()
        mirror = Mirror(db)
        mirror.add(company, path)
        assert await mirror.drain(timeout=30), f"seed {seed}: mirror did not drain"
        verdict = await verify(db, path, company)
        assert verdict.equal, f"seed {seed}: {verdict}"
    finally:
        mirror.close()
        writer.conn.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("chunk", range(CHUNKS))
async def test_generated_histories_converge(
    chunk: int,
    rig: tuple[Database, FaultProxy, str],
    running_cluster: Cluster,
    whatsmeow_template: Path,
    tmp_path: Path,
) -> None:
    db, proxy, database_url = rig
    seeds = range(chunk, CASES, CHUNKS)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for seed in seeds:
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (f"case-{seed}",))
    for seed in seeds:
        await _run_case(seed, db, proxy, running_cluster, whatsmeow_template, tmp_path / "state")
    assert len(seeds) == len(range(chunk, CASES, CHUNKS)) > 0
