"""Whether PostgreSQL is reachable, since when, and the last error (secrets scrubbed).

Every query outcome and the pool's ``reconnect_failed`` hook feed one ``DatabaseHealth``. It
logs one line when an outage starts and one when it ends, not one per failed query; listeners
(Sentry, readiness, the cache fallback) subscribe to those transitions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from wapool.clock import Clock, SystemClock
from wapool.observability.redact import describe_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthSnapshot:
    up: bool
    since_monotonic: float
    last_error: str | None
    outages: int
    outage_seconds_total: float
    #: Seconds PostgreSQL has been reachable without an outage (0 while it is down).
    up_seconds: float = 0.0


Listener = Callable[[bool, float, str | None], None]
"""Called with (up, duration of the state that just ended, last error)."""


class DatabaseHealth:
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._up = True
        self._since = self._clock.monotonic()
        self._last_error: str | None = None
        self._outages = 0
        self._outage_total = 0.0
        self._listeners: list[Listener] = []

    @property
    def up(self) -> bool:
        return self._up

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def mark_up(self) -> None:
        if self._up:
            return
        now = self._clock.monotonic()
        duration = now - self._since
        self._outage_total += duration
        self._up, self._since = True, now
        log.info("database_up", extra={"outage_seconds": round(duration, 3)})
        self._notify(duration)

    def mark_down(self, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else describe_error(error)
        self._last_error = text
        if not self._up:
            return
        now = self._clock.monotonic()
        duration = now - self._since
        self._up, self._since = False, now
        self._outages += 1
        log.warning("database_down", extra={"error": text})
        self._notify(duration)

    def snapshot(self) -> HealthSnapshot:
        elapsed = self._clock.monotonic() - self._since
        current = elapsed if not self._up else 0.0
        return HealthSnapshot(
            up=self._up,
            since_monotonic=self._since,
            last_error=self._last_error,
            outages=self._outages,
            outage_seconds_total=self._outage_total + current,
            up_seconds=elapsed if self._up else 0.0,
        )

    def _notify(self, duration: float) -> None:
        for listener in list(self._listeners):
            try:
                listener(self._up, duration, self._last_error)
            except Exception:
                log.exception("health_listener_failed")
