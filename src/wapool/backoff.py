"""Exponential backoff with full jitter and a cap, as a tiny pure class."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delay before attempt n+1: uniform in [0, min(cap, base * factor**n)] ("full jitter")."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if base <= 0 or cap < base or factor < 1:
            raise ValueError("backoff needs 0 < base <= cap and factor >= 1")
        self.base, self.cap, self.factor = base, cap, factor
        self._rand = rand
        self.failures = 0

    def ceiling(self) -> float:
        """The largest delay the next call to ``next_delay`` can return."""
        # The exponent stops growing once the cap is reached (2.0**1024 would overflow: a
        # webhook retried for a day fails that often).
        return min(
            self.cap,
            self.base * self.factor ** min(self.failures, 64),
        )

    def next_delay(self) -> float:
        delay = self._rand() * self.ceiling()
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
