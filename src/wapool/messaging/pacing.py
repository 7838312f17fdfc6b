"""Pacing: a token bucket per company and one for the whole daemon.

A message over the limit waits for its token; it is never dropped. ``delay`` says how long
until a send may go (0: now); ``take`` spends the tokens. Time comes from a ``Clock``, so tests
move it by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wapool.clock import Clock, SystemClock


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float = -1.0
    stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self.stamp is None or self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
            return
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def delay(self, now: float) -> float:
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0


@dataclass
class Pacer:
    """Per company ``per_minute`` with ``burst``; the daemon at most ``global_per_second``."""

    per_minute: float
    burst: int
    global_per_second: float
    clock: Clock = field(default_factory=SystemClock)
    _companies: dict[str, TokenBucket] = field(default_factory=dict)
    _global: TokenBucket | None = None

    def _buckets(self, company: str) -> tuple[TokenBucket, TokenBucket]:
        if self._global is None:
            self._global = TokenBucket(self.global_per_second, max(1.0, self.global_per_second))
        bucket = self._companies.get(company)
        if bucket is None:
            bucket = self._companies[company] = TokenBucket(self.per_minute / 60.0, self.burst)
        return bucket, self._global

    def delay(self, company: str) -> float:
        """Seconds until ``company`` may send its next message."""
        now = self.clock.monotonic()
        own, shared = self._buckets(company)
        return max(own.delay(now), shared.delay(now))

    def take(self, company: str) -> None:
        now = self.clock.monotonic()
        for bucket in self._buckets(company):
            bucket.take(now)
