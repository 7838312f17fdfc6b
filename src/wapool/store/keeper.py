"""Keeps the set of mirrored working stores in step with the active companies.

New companies get their store provisioned (created, kept or restored) and join the mirror; a
company whose store cannot be provisioned now (PostgreSQL down and no usable snapshot) is
retried with backoff. Companies that leave stop being mirrored; their files stay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from wapool.backoff import Backoff
from wapool.cache import FallbackCache
from wapool.clock import Clock, SystemClock
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.store.mirror import Mirror
from wapool.store.provision import StoreUnavailable, provision
from wapool.store.snapshot import Snapshot
from wapool.whatsapp.neonize_store import SchemaCreationFailed

log = logging.getLogger(__name__)


class StoreKeeper:
    def __init__(
        self,
        db: Database,
        state_dir: Path,
        mirror: Mirror,
        snapshots: FallbackCache[str, Snapshot] | None,
        clock: Clock | None = None,
        delay: float = 0.0,
    ) -> None:
        self._db = db
        #: Extra seconds per store (WAPOOL_SIMULATED_STORE_DELAY_SECONDS: slow bring-up drills).
        self._delay = delay
        self._state_dir = state_dir
        self._mirror = mirror
        self._snapshots = snapshots
        self._clock = clock or SystemClock()
        self._ready: set[str] = set()
        self._retry: dict[str, tuple[Backoff, float]] = {}

    @property
    def ready(self) -> frozenset[str]:
        return frozenset(self._ready)

    async def reconcile(self, active: Iterable[str]) -> None:
        wanted = set(active)
        for company_id in sorted(self._ready - wanted):
            self._mirror.remove(company_id)
            self._ready.discard(company_id)
            log.info("store_released", extra={"company": company_id})
        for company_id in sorted(wanted - self._ready):
            await self._provision(company_id)

    async def _provision(self, company_id: str) -> None:
        backoff, due = self._retry.get(company_id, (Backoff(base=1.0, cap=60.0), 0.0))
        if self._clock.monotonic() < due:
            return
        if self._delay:
            await asyncio.sleep(self._delay)
        try:
            result = await provision(self._db, self._state_dir, company_id, self._snapshots)
        except (StoreUnavailable, DatabaseUnavailable, SchemaCreationFailed, OSError) as exc:
            delay = max(1.0, backoff.next_delay())
            self._retry[company_id] = (backoff, self._clock.monotonic() + delay)
            log.error(
                "store_unavailable",
                extra={"company": company_id, "error": str(exc), "retry_in": round(delay, 1)},
            )
            return
        self._retry.pop(company_id, None)
        self._ready.add(company_id)
        self._mirror.add(company_id, result.path)
        log.info(
            "store_ready",
            extra={"company": company_id, "action": result.action, "reason": result.reason},
        )
