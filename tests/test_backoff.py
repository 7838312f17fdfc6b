from __future__ import annotations

import random

import pytest

from wapool.backoff import Backoff


def test_ceiling_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0, rand=lambda: 1.0)
    delays = [backoff.next_delay() for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    samples = []
    for _ in range(2000):
        backoff = Backoff(base=1.0, cap=8.0, rand=rng.random)
        backoff.failures = 3
        samples.append(backoff.next_delay())
    assert 0 <= min(samples) < 0.1
    assert 7.9 < max(samples) <= 8.0
    assert 3.6 < sum(samples) / len(samples) < 4.4


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base=0, cap=1)
