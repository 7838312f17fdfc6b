"""Outbound messaging as the daemon runs it: the outbox, the sender, PostgreSQL's side, and
what the API asks of them (``api.Service``).

A company is accepted for only while this daemon holds its lease, runs its client and has
adopted its rows from PostgreSQL (``outbound_pg``); otherwise the API answers 503 with the node
that drives it, or 404 for a company that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.leases import Leases
from wapool.messaging.api import Elsewhere
from wapool.messaging.cursors import Cursors
from wapool.messaging.outbound import Outbound, Record, Status
from wapool.messaging.outbound_pg import OutboundSync
from wapool.messaging.outbound_receipts import ReceiptReader
from wapool.messaging.outbox import Outbox
from wapool.messaging.pacing import Pacer
from wapool.messaging.sender import Sender
from wapool.settings import Settings
from wapool.supervisor.reconciler import Supervisor
from wapool.supervisor.session import State

log = logging.getLogger(__name__)

#: How often the set of companies the sender drives is brought in line with the leases.
DRIVE_EVERY = 0.25


class OutboundService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        leases: Leases,
        supervisor: Supervisor,
        cursors: Cursors,
    ) -> None:
        self._db = db
        self._leases = leases
        self._supervisor = supervisor
        self.outbox = Outbox.in_state_dir(settings.state_dir)
        if self.outbox.interrupted:
            log.error("sends_interrupted", extra={"count": len(self.outbox.interrupted),
                                                  "status": "uncertain"})  # fmt: skip
        pacer = Pacer(settings.send_per_minute, settings.send_burst,
                      settings.send_global_per_second)  # fmt: skip
        self.sender = Sender(
            self.outbox, pacer, supervisor.pool.send, self._connected,
            result_timeout=settings.send_result_timeout_seconds, on_change=self._changed,
        )  # fmt: skip
        self.sync = OutboundSync(db, self.outbox, leases, self.sender.wake)
        supervisor.pool.on_send_result = self.sender.on_result
        supervisor.pool.crash_listeners.append(self.sender.on_worker_lost)
        supervisor.state_listeners.append(self._state_changed)
        self.receipts = ReceiptReader(settings.state_dir, cursors, self.outbox)
        supervisor.inbox_listeners.append(self.receipts.wake)

    # -- api.Service -----------------------------------------------------------------------------

    def drives(self, company: str) -> bool | None:
        if company not in self._leases.held or company not in self._supervisor.sessions:
            return False
        return True if company in self.sync.ready else None

    async def elsewhere(self, company: str) -> Elsewhere | None:
        try:
            rows = await self._db.fetch(
                "SELECT c.id, l.holder FROM companies c LEFT JOIN company_leases l "
                "ON l.company_id = c.id AND l.expires_at > now() "
                "WHERE c.id = %s AND c.removed_at IS NULL AND c.enabled",
                (company,),
            )
        except DatabaseUnavailable:
            return Elsewhere(None, "PostgreSQL is unreachable: which node drives the company "
                                   "is unknown; ask the node that drives it")  # fmt: skip
        if not rows:
            return None
        holder = rows[0][1]
        if holder is None:
            return Elsewhere(None, "no daemon drives this company right now")
        if holder == self._leases.holder:
            return Elsewhere(holder, "this daemon is bringing the company up")
        return Elsewhere(str(holder), f"the company is driven by {holder}")

    async def accept(self, message: Outbound) -> tuple[Record, bool]:
        record, new = await self.outbox.accept(message)
        if new:
            self.sender.wake(message.company)
            self.sync.changed()
        return record, new

    async def find(self, company: str, message_id: str) -> Record | None:
        record = self.outbox.get(company, message_id)
        if record is None:
            with contextlib.suppress(DatabaseUnavailable, ValueError):
                record = await self.sync.look_up(company, message_id)
        return record

    async def retry(self, company: str, message_id: str) -> Record | None:
        if self.outbox.get(company, message_id) is None:
            return None
        record = await self.outbox.transition(
            message_id, Status.QUEUED, allowed_from=[Status.UNCERTAIN, Status.FAILED],
            reason="retried at the producer's request",
        )  # fmt: skip
        if record is not None:
            log.info("send_retry", extra={"company": company, "id": message_id})
            self._changed()
            self.sender.wake(company)
        return record

    # -- running ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the sender on the companies this daemon drives and has adopted."""
        while not stop.is_set():
            driven = self.sync.ready & set(self._leases.held) & set(self._supervisor.sessions)
            self.sender.drive(driven)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DRIVE_EVERY)

    async def stop_sending(self, timeout: float) -> None:
        """Before the clients stop: no new sends; those in flight get their answer (bounded)."""
        await self.sender.close(timeout)

    async def close(self) -> None:
        """After the clients stopped: mirror what is left and hand queued rows back."""
        with contextlib.suppress(DatabaseUnavailable):
            await self.sync.mirror()
            await self.sync.release(sorted(self._leases.held))
        self.outbox.close()

    def _connected(self, company: str) -> bool:
        session = self._supervisor.sessions.get(company)
        return session is not None and session.state is State.CONNECTED

    def _state_changed(self, company: str, state: State) -> None:
        if state is State.CONNECTED:
            self.sender.wake(company)

    def _changed(self) -> None:
        self.sync.changed()
