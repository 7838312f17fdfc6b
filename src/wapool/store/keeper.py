"""Keeps the set of mirrored working stores in step with the active companies.

New companies get their store provisioned (created, kept or restored) and join the mirror, up to
``parallel`` at a time (the daemon uses its connect limit: no more stores are made ready at once
than clients can connect at once, and a fresh store is a file copy, see ``template``); a
company whose store cannot be provisioned now (PostgreSQL down and no usable snapshot, a store
that cannot be read or written) is retried with backoff, and a store that cannot be read is
alerted once per episode. ``failing`` says why each such store is not ready (``/readyz``).
Companies that leave stop being mirrored; their files stay.

``recover`` is how a running client's store failure comes back here: once a real write succeeds
in its folder (``disk_watch.can_write``: after a full disk), the store is inspected and
provisioned again (restored if it is proven broken, see ``provision``) while its client waits,
and the supervisor restarts the client once it answers True.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

from wapool.backoff import Backoff
from wapool.cache import FallbackCache
from wapool.clock import Clock, SystemClock
from wapool.db.pool import Database
from wapool.errors import WapoolError
from wapool.observability import alerts
from wapool.observability.redact import describe_error
from wapool.store.aside import set_aside
from wapool.store.disk_watch import can_write
from wapool.store.faults import Fault, StoreFault, as_fault
from wapool.store.mirror import Mirror
from wapool.store.provision import Provisioned, StoreUnreadable, provision
from wapool.store.snapshot import Snapshot
from wapool.store.working_store import store_dir
from wapool.whatsapp.neonize_store import SchemaCreationFailed

log = logging.getLogger(__name__)

#: What provisioning may fail with and be retried after (anything else is a bug).
RETRIED = (WapoolError, SchemaCreationFailed, StoreFault, sqlite3.Error, OSError)


class StoreKeeper:
    def __init__(
        self,
        db: Database,
        state_dir: Path,
        mirror: Mirror,
        snapshots: FallbackCache[str, Snapshot] | None,
        clock: Clock | None = None,
        delay: float = 0.0,
        prekey_gap: int = 0,
        handed: Mapping[str, int] | None = None,
        parallel: int = 1,
    ) -> None:
        self._db = db
        self._parallel = max(1, parallel)
        #: Extra seconds per store (WAPOOL_SIMULATED_STORE_DELAY_SECONDS: slow bring-up drills),
        #: one store at a time, as a slow disk or neonize helper would.
        self._delay = delay
        self._prekey_gap = prekey_gap
        #: Companies taken through a graceful handoff (``Leases.handed_at``): their copy is
        #: complete, so a restore needs no pre-key gap nor new sender keys.
        self._handed: Mapping[str, int] = handed if handed is not None else {}
        self._slow = asyncio.Lock()
        self._state_dir = state_dir
        self._mirror = mirror
        self._snapshots = snapshots
        self._clock = clock or SystemClock()
        self._ready: set[str] = set()
        self._retry: dict[str, tuple[Backoff, float]] = {}
        #: Company -> why its store is not ready (cleared when it is).
        self.failing: dict[str, str] = {}
        #: Those of them that failed for want of disk space.
        self.disk_full: set[str] = set()
        self._alerted: set[str] = set()
        #: The daemon started without PostgreSQL and has not seen it yet: provisioning uses
        #: the local stores without asking it (``outage.resume``).
        self.offline = False

    @property
    def ready(self) -> frozenset[str]:
        return frozenset(self._ready)

    def retry_in(self, default: float) -> float:
        """Seconds until the next provisioning retry is due (``default`` when none waits; at
        least a second, whatever keeps the retry from running)."""
        now = self._clock.monotonic()
        due = min((due for _, due in self._retry.values()), default=now + default)
        return max(1.0, due - now)

    async def reconcile(self, active: Iterable[str]) -> None:
        wanted = set(active)
        for company_id in sorted(self._ready - wanted):
            self._mirror.remove(company_id)
            self._ready.discard(company_id)
            log.info("store_released", extra={"company": company_id})
        for company_id in (set(self.failing) | set(self._retry)) - wanted:
            self._forget(company_id)
            self._retry.pop(company_id, None)
        waiting = sorted(wanted - self._ready)
        slots = asyncio.Semaphore(self._parallel)

        async def one(company_id: str) -> None:
            async with slots:
                await self._provision(company_id)

        # Each provisioning catches what may be retried; anything else (a bug) is raised once
        # every store has had its turn.
        outcomes = await asyncio.gather(*map(one, waiting), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _provision(self, company_id: str) -> None:
        backoff, due = self._retry.get(company_id, (Backoff(base=1.0, cap=60.0), 0.0))
        if self._clock.monotonic() < due:
            return
        if self._delay:
            async with self._slow:
                await asyncio.sleep(self._delay)
        try:
            result = await self._run(company_id)
        except RETRIED as exc:
            delay = max(1.0, backoff.next_delay())
            self._retry[company_id] = (backoff, self._clock.monotonic() + delay)
            self._failed(company_id, exc, retry_in=delay, alert=True)
            return
        self._retry.pop(company_id, None)
        self._ready.add(company_id)
        self._mirror.add(company_id, result.path)

    async def recover(self, company_id: str) -> bool:
        """A running client's store failed: provision it again (restoring it if it is proven
        broken). True when it is usable again and its client may restart."""
        if company_id not in self._ready:
            return False
        directory = store_dir(self._state_dir, company_id)
        full = await asyncio.to_thread(can_write, directory)
        if full is not None:  # writes would fail again at once
            self._failed(company_id, StoreUnreadable(company_id, as_fault(full, directory)))
            return False
        self._mirror.remove(company_id)  # a restore replaces the file under its connection
        try:
            result = await self._run(company_id)
        except RETRIED as exc:
            self._failed(company_id, exc)  # the session's store_failed alert covers it
            return False
        if company_id in self._ready:  # it may have left meanwhile
            self._mirror.add(company_id, result.path)
        return True

    async def set_aside(self, company_id: str, reason: str) -> None:
        """Its lease was taken over: stop mirroring it and keep what it owes aside (``aside``);
        it is provisioned afresh if it comes back."""
        await self._mirror.let_go(company_id)
        self._ready.discard(company_id)
        try:
            await asyncio.to_thread(set_aside, self._state_dir, company_id, reason)
        except (sqlite3.Error, OSError, StoreFault) as exc:
            log.error("store_set_aside_failed",
                      extra={"company": company_id, "error": describe_error(exc)})  # fmt: skip

    async def _run(self, company_id: str) -> Provisioned:
        result = await provision(
            self._db,
            self._state_dir,
            company_id,
            self._snapshots,
            fence=self._mirror.fence,
            offline=self.offline,
            prekey_gap=None if company_id in self._handed else self._prekey_gap,
        )
        if company_id in self._alerted:
            log.warning("store_usable_again", extra={"company": company_id})
        self._forget(company_id)
        log.info(
            "store_ready",
            extra={"company": company_id, "action": result.action, "reason": result.reason},
        )
        return result

    def _failed(
        self,
        company_id: str,
        exc: BaseException,
        retry_in: float | None = None,
        alert: bool = False,
    ) -> None:
        error = describe_error(exc)
        self.failing[company_id] = error
        if isinstance(exc, StoreUnreadable) and exc.fault.fault is Fault.FULL:
            self.disk_full.add(company_id)
        if alert and isinstance(exc, StoreUnreadable) and company_id not in self._alerted:
            self._alerted.add(company_id)
            alerts.store_unreadable(company_id, str(exc))
        extra: dict[str, object] = {"company": company_id, "error": error}
        if retry_in is not None:
            extra["retry_in"] = round(retry_in, 1)
        log.error("store_unavailable", extra=extra)

    def _forget(self, company_id: str) -> None:
        self.failing.pop(company_id, None)
        self.disk_full.discard(company_id)
        self._alerted.discard(company_id)
