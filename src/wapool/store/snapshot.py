"""Snapshots of a working store for the outage fallback.

A snapshot is the whole SQLite file (``sqlite3.Connection.serialize``) taken at a moment when it
equals the PostgreSQL copy: right after the mirror applied everything pending, or right after a
restore from PostgreSQL. While PostgreSQL is down, a store that must be rebuilt is rebuilt from
the snapshot if it is younger than ``WAPOOL_CACHE_TTL_SECONDS``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from wapool.cache import FallbackCache
from wapool.clock import Clock
from wapool.store import changelog
from wapool.store.working_store import transaction


@dataclass(frozen=True)
class Snapshot:
    company_id: str
    store_uuid: str
    applied_seq: int
    image: bytes


def snapshot_cache(
    ttl_seconds: float, max_bytes: int, clock: Clock | None = None
) -> FallbackCache[str, Snapshot]:
    return FallbackCache(ttl_seconds, max_bytes, clock, sizeof=lambda s: len(s.image) or 1)


class SnapshotTaker:
    """Puts a company's store in the cache after the mirror drained it, at most once per
    ``every`` seconds per company (a serialize copies the whole file)."""

    def __init__(self, cache: FallbackCache[str, Snapshot], clock: Clock, every: float) -> None:
        self.cache = cache
        self._clock = clock
        self._every = every
        self._taken: dict[str, float] = {}

    def after_drain(
        self, company_id: str, conn: sqlite3.Connection, store_uuid: str, applied_seq: int
    ) -> None:
        """``conn``'s store was just drained up to ``applied_seq``: snapshot it, if it is time
        and nothing was written since."""
        now = self._clock.monotonic()
        if now - self._taken.get(company_id, float("-inf")) < self._every:
            return
        with transaction(conn):
            if changelog.pending(conn).rows:
                return  # written to since; try again after the next drain
            image = conn.serialize()
        self._taken[company_id] = now
        self.cache.remember(company_id, Snapshot(company_id, store_uuid, applied_seq, image))

    def age(self, company_id: str) -> float | None:
        return self.cache.peek_age(company_id)

    def forget(self, company_id: str) -> None:
        """The company left the mirror: should it come back, snapshot it at its first drain."""
        self._taken.pop(company_id, None)
