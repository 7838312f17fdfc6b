"""Bring-up: how many leases to take at a time, and the check right before a client starts.

A lease taken is kept alive by renewals from that moment on, but a daemon should not hoard
companies it cannot drive yet: another daemon could drive them now, and a long queue behind a
slow provisioning is exactly what once let leases lapse before their clients started. So:

**The batch rule.** "Pending" are the leases this daemon holds whose client has not started
yet. A daemon holds at most ``budget`` pending leases and takes ``budget - pending`` more at a
time, where

* before anything was measured, ``budget = WAPOOL_MAX_CONCURRENT_CONNECTS``;
* then ``budget = max(1, floor(rate * lease_seconds / 2))``: whatever is pending can be
  brought up within half a lease at the measured pace. ``rate`` (companies per second) is
  measured on each batch, from taking it to its last client start (companies started divided
  by that time; a batch not finished after a lease is measured then), smoothed over batches
  (each new measure weighs half).

A pending lease taken more than a lease ago (its store cannot be provisioned, PostgreSQL is
down) stops counting, so one stuck company cannot stall the others.

**The start guard.** ``may_start`` is asked right before every client start, restarts after a
worker crash included: the company's lease must be ``Leases.live`` (held under our epoch and
sure to outlast the next renewal), or adopted from the state directory at a start without
PostgreSQL and not re-validated yet (``Leases.resumable``, issue 13). Nothing else stops a running client: the renewal loop stops
the companies whose lease was lost, and a PostgreSQL outage alone stops none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

from wapool.clock import Clock, SystemClock
from wapool.errors import DatabaseUnavailable
from wapool.leases import Leases

log = logging.getLogger(__name__)

#: Fraction of a lease that whatever is pending must be able to come up in.
LEASE_SHARE = 0.5


@dataclass
class _Batch:
    taken_at: float
    waiting: set[str]
    started: int = 0
    last_start: float = 0.0


class BringUp:
    def __init__(self, leases: Leases, first_batch: int, clock: Clock | None = None) -> None:
        self._leases = leases
        self._first_batch = max(1, first_batch)
        self._clock = clock or SystemClock()
        self._pending: dict[str, float] = {}
        self._batches: list[_Batch] = []
        #: Measured companies brought up per second (None until a batch was measured).
        self.rate: float | None = None
        #: Companies wait for a lease this daemon will take as soon as it has room.
        self.backlog = False
        #: Seconds until a lease this daemon's share wants may expire (None: nothing to expect).
        self.look_again: float | None = None

    @property
    def budget(self) -> int:
        if self.rate is None:
            return self._first_batch
        return max(1, math.floor(self.rate * self._leases.seconds * LEASE_SHARE))

    def pending(self) -> int:
        """Leases held, taken less than a lease ago, whose client has not started yet."""
        self._settle()
        now = self._clock.monotonic()
        return sum(1 for t in self._pending.values() if now - t < self._leases.seconds)

    def room(self) -> int:
        """How many more leases to take now."""
        return max(0, self.budget - self.pending())

    async def take(self, waiting: set[str], share: int | None = None) -> dict[str, int]:
        """Take the next batch of leases among ``waiting``: those handed to this daemon
        (``wapool move``) first, then free ones up to ``share`` more (``balance``; None: no
        cap). Sets ``backlog``: more companies this daemon will take as soon as it has room."""
        room = self.room()
        self.backlog = bool(waiting) and room == 0 and share != 0
        self.look_again = None
        if not waiting or not room:
            return {}
        try:
            taken = await self._leases.acquire(waiting, limit=room, reserved_only=True)
            limit = room - len(taken) if share is None else min(room - len(taken), share)
            free = await self._leases.acquire(waiting - taken.keys(), limit=max(0, limit))
        except DatabaseUnavailable:
            self.backlog = False  # no hurry while PostgreSQL is away
            return {}
        taken |= free
        self.taken(taken)
        # Our share wants more than was free: another holder's lease may expire (a dead node's);
        # look again right then rather than at the next sweep.
        self.look_again = self._leases.next_expiry if limit > len(free) else None
        if taken:
            extra = {"count": len(taken), "budget": self.budget}
            log.info("leases_taken", extra=extra | {"waiting": len(waiting) - len(taken)})
        # A full batch: more may be free. Fewer: the rest is held by other daemons.
        self.backlog = limit > 0 and len(free) >= limit and len(waiting) > len(taken)
        # Expired leases of another holder, to be taken over once they are ripe: look again soon.
        self.backlog = self.backlog or self._leases.ripening > 0
        return taken

    def taken(self, companies: Iterable[str]) -> None:
        now = self._clock.monotonic()
        batch = set(companies)
        if batch:
            self._batches.append(_Batch(now, set(batch)))
            self._pending.update(dict.fromkeys(batch, now))

    def may_start(self, company: str) -> bool:
        # A lease adopted at a start without PostgreSQL: resumed from its working store.
        return self._leases.live(company) or self._leases.resumable(company)

    def started(self, company: str) -> None:
        if self._pending.pop(company, None) is None:
            return  # a restart after a crash, or a company no longer pending
        now = self._clock.monotonic()
        for batch in self._batches:
            if company in batch.waiting:
                batch.waiting.discard(company)
                batch.started += 1
                batch.last_start = now
        self._settle()

    def _settle(self) -> None:
        """Forget leases no longer held; measure the batches that are done or a lease old."""
        held = self._leases.held
        for company in [c for c in self._pending if c not in held]:
            del self._pending[company]
        now = self._clock.monotonic()
        for batch in list(self._batches):
            batch.waiting &= held.keys()
            overdue = now - batch.taken_at >= self._leases.seconds
            if batch.waiting and not overdue:
                continue
            self._batches.remove(batch)
            end = now if batch.waiting else batch.last_start
            if batch.started:
                self._measure(batch.started / max(end - batch.taken_at, 1e-3))

    def _measure(self, rate: float) -> None:
        self.rate = rate if self.rate is None else (self.rate + rate) / 2
