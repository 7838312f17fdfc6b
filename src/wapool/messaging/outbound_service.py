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
import time
from typing import Any

from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.leases import Leases
from wapool.messaging.api import Elsewhere
from wapool.messaging.cursors import Cursors
from wapool.messaging.feed import InboxFeed
from wapool.messaging.outbound import Outbound, Record, Status
from wapool.messaging.outbound_pg import OutboundSync
from wapool.messaging.outbound_receipts import ReceiptReader
from wapool.messaging.outbox import Outbox
from wapool.messaging.pacing import Pacer
from wapool.messaging.sender import Sender
from wapool.observability.metrics import Exposition
from wapool.settings import Settings
from wapool.supervisor import protocol
from wapool.supervisor.reconciler import Supervisor
from wapool.supervisor.session import State

log = logging.getLogger(__name__)

#: How often the set of companies the sender drives is brought in line with the leases.
DRIVE_EVERY = 0.25
#: Finished messages stay in the outbox this long (status look-ups, idempotency keys), then
#: only in PostgreSQL.
KEEP_SECONDS = 7 * 86_400.0
PRUNE_EVERY = 600.0


class OutboundService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        leases: Leases,
        supervisor: Supervisor,
        cursors: Cursors,
        feed: InboxFeed | None = None,
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
        self.receipts = ReceiptReader(settings.state_dir, cursors, self.outbox, feed)
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

    async def mark_read(self, company: str, chat: str, sender: str, ids: list[str]) -> bool:
        if not self._connected(company):
            return False
        line = protocol.encode("mark_read", company=company, chat=chat, sender=sender, ids=ids)
        return await self._supervisor.pool.deliver(company, line)

    # -- running ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the sender on the companies this daemon drives and has adopted."""
        next_prune = time.monotonic() + PRUNE_EVERY
        while not stop.is_set():
            driven = self.sync.ready & set(self._leases.held) & set(self._supervisor.sessions)
            self.sender.drive(driven)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY
                try:
                    await self.outbox.prune(time.time() - KEEP_SECONDS)
                except Exception as exc:  # a full disk: pruning waits for the next round
                    log.error("outbox_prune_failed", extra={"error": str(exc)})
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

    def status(self) -> dict[str, Any]:
        """For /status: per company, messages queued, sending and uncertain."""
        companies: dict[str, dict[str, int]] = {}
        for (company, status), count in self.outbox.open_counts().items():
            companies.setdefault(company, {})[status] = count
        return {
            "interrupted_at_start": len(self.outbox.interrupted),
            "in_flight": self.sender.in_flight,
            "accepting": sorted(self.sync.ready),
            "companies": companies,
        }

    def metrics(self, out: Exposition) -> None:
        counts = self.outbox.open_counts()
        out.family("wapool_outbound_messages", "gauge",
                   "Outbound messages queued, sending or uncertain (uncertain: may have been sent; alert).",
                   [({"company": c, "status": s}, float(n)) for (c, s), n in sorted(counts.items())])  # fmt: skip
        stats = self.sender.stats
        out.family("wapool_outbound_sends_total", "counter", "Send attempts by outcome.",
                   [({"outcome": o}, float(n)) for o, n in sorted(stats.outcomes.items())])  # fmt: skip
        out.family("wapool_outbound_receipts_applied_total", "counter",
                   "Receipts that moved an outbound message forward.",
                   [({}, float(self.receipts.applied))])  # fmt: skip
        out.family("wapool_outbound_mirrored_rows_total", "counter",
                   "Outbox rows written to PostgreSQL.", [({}, float(self.sync.mirrored_rows))])  # fmt: skip
        out.family("wapool_outbound_claimed_rows_total", "counter",
                   "Producers' rows claimed from outbound_messages.",
                   [({}, float(self.sync.claimed_rows))])  # fmt: skip

    def _connected(self, company: str) -> bool:
        session = self._supervisor.sessions.get(company)
        return session is not None and session.state is State.CONNECTED

    def _state_changed(self, company: str, state: State) -> None:
        if state is State.CONNECTED:
            self.sender.wake(company)

    def _changed(self) -> None:
        self.sync.changed()
