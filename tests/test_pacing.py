"""Pacing by its numbers, on a manual clock: burst, then the per-minute rate; a global limit
over every company; nothing is dropped, only delayed."""

from __future__ import annotations

import pytest

from wapool.clock import ManualClock
from wapool.messaging.pacing import Pacer


def test_burst_then_the_rate_per_company() -> None:
    clock = ManualClock()
    pacer = Pacer(per_minute=6, burst=2, global_per_second=100, clock=clock)
    for _ in range(2):
        assert pacer.delay("a") == 0
        pacer.take("a")
    assert pacer.delay("a") == pytest.approx(10.0)  # 6 a minute: one every 10 s
    assert pacer.delay("b") == 0  # another company has its own bucket
    clock.advance(4)
    assert pacer.delay("a") == pytest.approx(6.0)
    clock.advance(6)
    assert pacer.delay("a") == 0
    pacer.take("a")
    clock.advance(1000)  # a long pause refills to the burst, not beyond
    for _ in range(2):
        pacer.take("a")
    assert pacer.delay("a") > 0


def test_the_global_limit_spans_companies() -> None:
    clock = ManualClock()
    pacer = Pacer(per_minute=600, burst=10, global_per_second=2, clock=clock)
    pacer.take("a")
    pacer.take("b")
    assert pacer.delay("c") == pytest.approx(0.5)
    clock.advance(0.5)
    assert pacer.delay("c") == 0
