"""Prompt reaction to ``wapool company ...``, ``wapool pair``, handoffs and nodes: LISTEN.

While PostgreSQL is up, every change to ``companies`` wakes the daemon's reconcile at once;
when it is down, the listener retries with backoff and the periodic reconcile still runs. It
holds one pooled connection while listening (so the pool bound still holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from wapool.backoff import Backoff
from wapool.db.pool import Database

log = logging.getLogger(__name__)

#: The registry, pairing requests, leases handed over, nodes joining or told to drain.
CHANNELS = ("wapool_companies", "wapool_pairing", "wapool_leases", "wapool_nodes")


async def listen(db: Database, changed: asyncio.Event, stop: asyncio.Event) -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    while not stop.is_set():
        try:
            async with db.pool.connection() as conn:
                await conn.set_autocommit(True)
                for channel in CHANNELS:
                    await conn.execute(f"LISTEN {channel}")
                backoff.reset()
                changed.set()  # catch up on anything missed while not listening
                while not stop.is_set():
                    async for _ in conn.notifies(timeout=1.0):
                        changed.set()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.debug("listener_retry", extra={"error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next_delay())
