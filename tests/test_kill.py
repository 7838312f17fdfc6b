"""Real SIGKILLs of the mirroring process (``wapool run``) while whatsmeow-shaped writes go on,
plus a PostgreSQL reader that must never see half of a multi-row transaction (invariant 2)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
from pathlib import Path

import psycopg
import pytest

from tests.conftest import new_store
from tests.daemon import Daemons
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.settings import Settings
from wapool.store.verify import verify, wait_drained

pytestmark = pytest.mark.timeout(300)

GROUP = 5
COMPANIES = ("k1", "k2", "k3")


def _group_txn(conn: sqlite3.Connection, jid: str, n: int) -> None:
    """One transaction: a new group of GROUP sessions, and the group three back removed."""
    conn.execute("BEGIN IMMEDIATE")
    for i in range(GROUP):
        conn.execute(
            "INSERT INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?, ?, ?)",
            (jid, f"g{n}-{i}@s.whatsapp.net", os.urandom(64)),
        )
    conn.execute(
        "DELETE FROM whatsmeow_sessions WHERE our_jid = ? AND their_id LIKE ?", (jid, f"g{n - 3}-%")
    )
    conn.execute("COMMIT")


async def _watch_groups(url: str, stop: asyncio.Event, seen: list[int]) -> None:
    """Poll PostgreSQL; every group visible must be complete."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            cur = await conn.execute(
                "SELECT company_id, pk FROM store_rows WHERE tbl = 'whatsmeow_sessions'"
            )
            groups: dict[tuple[str, str], int] = {}
            for company, pk in await cur.fetchall():
                their = json.loads(pk)[1][1:]
                if their.startswith("g"):
                    key = (company, their.split("-")[0])
                    groups[key] = groups.get(key, 0) + 1
            partial = {k: v for k, v in groups.items() if v != GROUP}
            assert not partial, f"partial transactions visible in PostgreSQL: {partial}"
            seen.append(len(groups))
            await asyncio.sleep(0.01)


async def test_sigkill_of_the_mirroring_daemon_loses_and_splits_nothing(
    database_url: str,
    whatsmeow_template: Path,
    settings: Settings,
    tmp_path: Path,
    daemons: Daemons,
) -> None:
    add_companies(database_url, *COMPANIES)
    rng = random.Random(2026)
    writers = {}
    for n, company in enumerate(COMPANIES):
        path = new_store(whatsmeow_template, settings.state_dir, company)
        writers[company] = (path, writer_for(path, 100 + n))
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(settings.state_dir),
    }
    log = tmp_path / "daemon.log"
    stop_watch = asyncio.Event()
    seen: list[int] = []
    watcher = asyncio.create_task(_watch_groups(database_url, stop_watch, seen))
    group = 0
    kills = 0
    try:
        for _ in range(8):
            proc = daemons.start(env, log=log)  # each run appends to the log
            await proc.wait_for_async("event=daemon_ready")
            deadline = asyncio.get_running_loop().time() + rng.uniform(0.2, 1.5)
            while asyncio.get_running_loop().time() < deadline:
                for _, writer in writers.values():
                    _group_txn(writer.conn, writer.jid, group)
                    writer.random_transaction()
                group += 1
                await asyncio.sleep(rng.uniform(0, 0.01))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
            assert not watcher.done()
        proc = daemons.start(env, log=log)
        await proc.wait_for_async("event=daemon_ready")
        for path, _ in writers.values():
            assert await wait_drained(path, 30) == 0
        assert proc.stop(timeout=30) == 0
    finally:
        stop_watch.set()
        await watcher
    assert kills == 8
    assert max(seen) >= len(COMPANIES)  # the watcher did see groups
    db = Database.from_settings(settings)
    await db.open(wait=True)
    try:
        for company, (path, writer) in writers.items():
            verdict = await verify(db, path, company)
            assert verdict.equal, verdict
            writer.conn.close()
    finally:
        await db.close()
