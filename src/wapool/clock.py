"""Clocks: the system one, and a manual one that tests move by hand.

Everything that measures TTLs, ages or backoff takes a ``Clock`` so that tests travel in time
instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for ages and timeouts)."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch (for timestamps shown to people)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when ``advance`` is called."""

    def __init__(self, start: float = 1_000.0, epoch: float = 1_790_000_000.0) -> None:
        self._now = start
        self._epoch_offset = epoch - start

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._epoch_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._now += seconds
