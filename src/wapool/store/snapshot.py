"""Snapshots of a working store for the outage fallback.

A snapshot is the whole SQLite file (``sqlite3.Connection.serialize``) taken at a moment when it
equals the PostgreSQL copy: right after the mirror applied everything pending, or right after a
restore from PostgreSQL. While PostgreSQL is down, a store that must be rebuilt is rebuilt from
the snapshot if it is younger than ``WAPOOL_CACHE_TTL_SECONDS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from wapool.cache import FallbackCache
from wapool.clock import Clock


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
