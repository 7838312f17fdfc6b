"""The outage fallback cache: last-known-good values, kept for a TTL, used only on failure.

A ``FallbackCache`` wraps ``cachetools.TTLCache`` with an injectable clock. Callers ``remember``
what PostgreSQL just gave them and ``recall`` it when PostgreSQL fails; values are deep-copied
both ways so nobody can mutate the cached copy. Counters tell operators how often the fallback
served (hits), could not serve (misses) and how old the served data was.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import TTLCache

from wapool.clock import Clock, SystemClock

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Recalled(Generic[V]):
    """A value served from the cache, with how old it is."""

    value: V
    age_seconds: float


@dataclass(frozen=True)
class CacheStats:
    entries: int
    hits: int
    misses: int
    last_hit_age_seconds: float | None
    oldest_entry_age_seconds: float | None


class FallbackCache(Generic[K, V]):
    def __init__(
        self,
        ttl_seconds: float,
        max_size: int,
        clock: Clock | None = None,
        sizeof: Callable[[V], int] | None = None,
    ) -> None:
        """``max_size`` counts entries, or units of ``sizeof`` (e.g. bytes) when given."""
        self._clock = clock or SystemClock()
        self._entries: TTLCache[K, tuple[V, float]] = TTLCache(
            maxsize=max_size,
            ttl=ttl_seconds,
            timer=self._clock.monotonic,
            getsizeof=(lambda entry: sizeof(entry[0])) if sizeof else None,
        )
        self._lock = threading.Lock()
        self.ttl_seconds = ttl_seconds
        self.hits = 0
        self.misses = 0
        self.last_hit_age_seconds: float | None = None

    def remember(self, key: K, value: V) -> None:
        """Store a value PostgreSQL has just confirmed."""
        with self._lock:
            self._entries[key] = (copy.deepcopy(value), self._clock.monotonic())

    def recall(self, key: K) -> Recalled[V] | None:
        """The cached value if it is younger than the TTL, counting a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            value, stored_at = entry
            age = self._clock.monotonic() - stored_at
            self.hits += 1
            self.last_hit_age_seconds = age
            return Recalled(copy.deepcopy(value), age)

    def peek_age(self, key: K) -> float | None:
        """Age of the cached value, without counting a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else self._clock.monotonic() - entry[1]

    def sweep(self) -> int:
        """Drop expired entries now (the scheduler calls this); return how many went."""
        with self._lock:
            return len(self._entries.expire())

    def stats(self) -> CacheStats:
        with self._lock:
            now = self._clock.monotonic()
            ages = [now - stored_at for _, stored_at in self._entries.values()]
            return CacheStats(
                entries=len(ages),
                hits=self.hits,
                misses=self.misses,
                last_hit_age_seconds=self.last_hit_age_seconds,
                oldest_entry_age_seconds=max(ages) if ages else None,
            )
