"""A graceful handoff: stop the client, drain its changes, give the lease up with the sequence.

Order, per batch of companies: their clients stop (the workers confirm it: nothing writes their
stores any more, nothing is connected), the mirror drains them (``Mirror.drain_companies``: every change read after the stop is applied),
then (after the outbound messages queued here are given back to PostgreSQL)
``Leases.hand_over`` releases the leases, recording each PostgreSQL copy's applied
sequence, and wakes the other daemons. The local store files are then removed: PostgreSQL holds
everything they held, and a stale copy of key material should not linger on a host that no
longer drives the company (it would be restored anyway if the company came back).

If PostgreSQL fails in the middle, the companies stay stopped and their leases held
(``pending``: driven by nobody, never by two); the next reconcile tries again, and a lease lost
meanwhile simply drops out. The taker restores from PostgreSQL at or beyond the recorded
sequence before it connects (``reached``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wapool.clock import Clock, SystemClock
from wapool.errors import DatabaseUnavailable
from wapool.leases import Leases
from wapool.store import changelog
from wapool.store.mirror import Mirror
from wapool.store.working_store import read_only, store_path
from wapool.supervisor.reconciler import Supervisor

log = logging.getLogger(__name__)

#: How long a handoff waits for the mirror to apply a batch's last changes.
DRAIN_SECONDS = 10.0
#: How long a handoff waits for the workers to confirm the clients stopped (a client that does
#: not stop in time gets its worker recycled, which also ends it).
STOP_SECONDS = 20.0
#: Latest durations kept for the summaries in /metrics.
SAMPLES = 1000


@dataclass
class FleetStats:
    """Counters and latest durations behind the multi-node metrics."""

    handoffs_out: int = 0
    handoffs_in: int = 0
    handoff_failures: int = 0
    #: Seconds from stopping a batch's clients to its leases given up.
    handoff_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    #: Seconds from taking a lease to the company's client connected.
    lease_to_connected: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    clock: Clock = field(default_factory=SystemClock)
    _taken_at: dict[str, float] = field(default_factory=dict)

    def lease_taken(self, company: str) -> None:
        self._taken_at[company] = self.clock.monotonic()

    def connected(self, company: str) -> None:
        taken = self._taken_at.pop(company, None)
        if taken is not None:
            self.lease_to_connected.append(self.clock.monotonic() - taken)


class Handoffs:
    def __init__(
        self,
        leases: Leases,
        supervisor: Supervisor,
        mirror: Mirror,
        state_dir: Path,
        stats: FleetStats | None = None,
        clock: Clock | None = None,
        before_release: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._leases = leases
        self._supervisor = supervisor
        self._mirror = mirror
        self._state_dir = state_dir
        self._clock = clock or SystemClock()
        #: Company -> node it goes to (None: anyone): clients stopped, leases not given up yet.
        self.pending: dict[str, str | None] = {}
        self.stats = stats or FleetStats()
        #: Called with a drained batch right before its leases are given up (outbound messages
        #: queued here go back to PostgreSQL for the taker).
        self._before_release = before_release

    async def run(self, companies: Mapping[str, str | None]) -> list[str]:
        """Hand these (and any batch left pending) over; return the companies handed over."""
        self.pending.update(companies)
        for company in [c for c in self.pending if c not in self._leases.held]:
            del self.pending[company]  # lost meanwhile: whoever took it drives it
        if not self.pending:
            return []
        started = self._clock.monotonic()
        for company in companies:
            log.info(
                "handoff_started", extra={"company": company, "to": companies[company] or "any"}
            )
            await self._supervisor.stop(company)
        if not await self._mirror.drain_companies(self.pending, DRAIN_SECONDS):
            self.stats.handoff_failures += 1
            log.warning("handoff_waiting", extra={"companies": len(self.pending),
                                                  "reason": "changes not yet in PostgreSQL"})  # fmt: skip
            return []
        try:
            if self._before_release is not None:
                await self._before_release(sorted(self.pending))
            released = await self._leases.hand_over(self.pending)
        except DatabaseUnavailable:
            self.stats.handoff_failures += 1
            log.warning("handoff_waiting", extra={"companies": len(self.pending),
                                                  "reason": "PostgreSQL unavailable"})  # fmt: skip
            return []
        self.pending.clear()
        elapsed = self._clock.monotonic() - started
        self.stats.handoffs_out += len(released)
        self.stats.handoff_seconds.extend([elapsed] * len(released))
        log.info("handoff_done", extra={"companies": len(released), "seconds": round(elapsed, 3)})
        return sorted(released)

    async def discard_stores(self, companies: list[str]) -> None:
        """Remove the local store files of companies handed over (all their changes are in
        PostgreSQL; the mirror has let them go)."""
        for company in companies:
            path = store_path(self._state_dir, company)
            for file in (
                path,
                path.with_name(path.name + "-wal"),
                path.with_name(path.name + "-shm"),
            ):
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(file.unlink)

    async def reached(self, company: str) -> bool:
        """A company taken through a handoff: its local store is at or beyond the sequence the
        previous holder handed it over at (always true after a restore; checked anyway)."""
        wanted = self._leases.handed_at.get(company)
        if wanted is None:
            return True
        try:
            have = await asyncio.to_thread(_last_seq, store_path(self._state_dir, company))
        except Exception as exc:  # an unreadable store is the keeper's business, not ours
            log.warning("handoff_check_failed", extra={"company": company, "error": str(exc)})
            return False
        if have < wanted:
            log.error("handoff_behind", extra={"company": company, "have": have, "want": wanted})
            return False
        self._leases.handed_at.pop(company, None)
        self.stats.handoffs_in += 1
        return True


def _last_seq(path: Path) -> int:
    with contextlib.closing(read_only(path)) as conn:
        return changelog.last_seq(conn)
