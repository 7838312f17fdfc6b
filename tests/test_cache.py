from __future__ import annotations

import pytest

from wapool.cache import FallbackCache
from wapool.clock import ManualClock


def test_recall_serves_a_deep_copy_until_the_ttl() -> None:
    clock = ManualClock()
    cache: FallbackCache[str, list[dict[str, int]]] = FallbackCache(300, 10, clock)
    original = [{"a": 1}]
    cache.remember("k", original)
    original[0]["a"] = 2  # the caller's object is not the cached one
    clock.advance(299)
    first = cache.recall("k")
    assert first is not None
    assert first.value == [{"a": 1}]
    assert first.age_seconds == pytest.approx(299)
    first.value[0]["a"] = 3  # nor is what recall returns
    second = cache.recall("k")
    assert second is not None
    assert second.value == [{"a": 1}]
    clock.advance(1)
    assert cache.recall("k") is None
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (2, 1)
    assert stats.last_hit_age_seconds == pytest.approx(299)


def test_sweep_drops_expired_entries_and_stats_report_age() -> None:
    clock = ManualClock()
    cache: FallbackCache[str, int] = FallbackCache(60, 10, clock)
    cache.remember("old", 1)
    clock.advance(40)
    cache.remember("new", 2)
    clock.advance(10)
    assert cache.stats().oldest_entry_age_seconds == pytest.approx(50)
    clock.advance(15)
    assert cache.sweep() == 1
    assert cache.stats().entries == 1
    assert cache.recall("new") is not None


def test_size_is_bounded() -> None:
    cache: FallbackCache[int, int] = FallbackCache(60, 3, ManualClock())
    for i in range(10):
        cache.remember(i, i)
    assert cache.stats().entries == 3
