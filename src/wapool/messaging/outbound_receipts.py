"""Receipts -> outbound statuses: a consumer of each company's inbox (``inbox.receipts_after``).

The worker writes WhatsApp's delivery, read and played receipts to the company's inbox like any
inbound event; this reader moves the matching outbox messages forward (``delivered``, then
``read``; ``played`` counts as read) and keeps its place in the shared cursors file as consumer
``outbound`` (so an inbox is not trimmed before its receipts were applied). A receipt that
arrives before its message's send was recorded is kept by the outbox and applied then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path

from wapool.messaging.cursors import Cursors, Progress
from wapool.messaging.inbox import INBOX_FILE, InboxReader
from wapool.messaging.model import Receipt
from wapool.messaging.outbound import Status
from wapool.messaging.outbox import Outbox
from wapool.observability.redact import describe_error

log = logging.getLogger(__name__)

CONSUMER = "outbound"
BATCH = 500
STATUSES = {"delivered": Status.DELIVERED, "read": Status.READ, "played": Status.READ}


class ReceiptReader:
    def __init__(self, state_dir: Path, cursors: Cursors, outbox: Outbox) -> None:
        self._state_dir = state_dir
        self._cursors = cursors
        self._outbox = outbox
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self.applied = 0

    def wake(self, company: str, _seq: int = 0) -> None:
        self._due.add(company)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._due.update(p.parent.name for p in self._state_dir.glob(f"*/{INBOX_FILE}"))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)
            self._wake.clear()
            due, self._due = self._due, set()
            for company in sorted(due):
                try:
                    if await self.apply(company) >= BATCH:
                        self.wake(company)
                except (sqlite3.Error, OSError) as exc:
                    log.error("receipts_failed", extra={"company": company,
                                                        "error": describe_error(exc)})  # fmt: skip

    async def apply(self, company: str) -> int:
        """Apply the company's receipts not yet applied; return how many inbox rows were read."""
        path = self._state_dir / company / INBOX_FILE
        if not path.exists():
            return 0
        reader = InboxReader(path)
        try:
            identity = reader.identity()
            start = self._cursors.get(company, CONSUMER, identity)
            high = reader.high_seq()
            envelopes = [e for e in reader.receipts_after(start, BATCH) if e.seq <= high]
        finally:
            reader.close()
        for envelope in envelopes:
            event = envelope.event
            if not isinstance(event, Receipt) or (status := STATUSES.get(event.status)) is None:
                continue
            for wa_id in event.message_ids:
                if await self._outbox.receipt(company, wa_id, status) is not None:
                    self.applied += 1
        done = envelopes[-1].seq if len(envelopes) >= BATCH else high
        if done > start:
            progress = Progress({(company, CONSUMER): (identity, done)}, [], [])
            await asyncio.to_thread(self._cursors.save, progress)
        return len(envelopes)
