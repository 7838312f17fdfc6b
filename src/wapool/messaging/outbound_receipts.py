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
import time
from pathlib import Path

from wapool.messaging.cursors import Cursors, Progress
from wapool.messaging.feed import InboxFeed
from wapool.messaging.inbox import INBOX_FILE
from wapool.messaging.model import Envelope, Receipt
from wapool.messaging.outbound import Status
from wapool.messaging.outbox import Outbox
from wapool.observability.redact import describe_error

log = logging.getLogger(__name__)

CONSUMER = "outbound"
BATCH = 500
SAVE_EVERY = 1.0
COALESCE = 0.02
STATUSES = {"delivered": Status.DELIVERED, "read": Status.READ, "played": Status.READ}


class ReceiptReader:
    def __init__(
        self, state_dir: Path, cursors: Cursors, outbox: Outbox, feed: InboxFeed | None = None
    ) -> None:
        self._state_dir = state_dir
        self._cursors = cursors
        self._outbox = outbox
        self._feed = feed or InboxFeed()
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self.applied = 0
        #: When each company's cursor was last saved, and how far it got.
        self._saved_at: dict[str, float] = {}
        self._positions: dict[str, tuple[str, int]] = {}

    def wake(self, company: str, _seq: int = 0) -> None:
        self._feed.touch(company)
        self._due.add(company)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._due.update(p.parent.name for p in self._state_dir.glob(f"*/{INBOX_FILE}"))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)
            # Inbox notices come one per inbound message: gather a moment's worth, then read
            # every company that advanced in one worker-thread hop.
            await asyncio.sleep(COALESCE)
            self._wake.clear()
            due, self._due = self._due, set()
            try:
                await self.apply_many(sorted(due))
            except Exception as exc:  # a broken inbox row, a full disk: logged, retried later
                log.error("receipts_failed", extra={"error": describe_error(exc)}, exc_info=exc)
                self._due |= due
                await asyncio.sleep(1.0)

    async def apply(self, company: str) -> int:
        """Apply the company's receipts not yet applied; return how many inbox rows were read."""
        return (await self.apply_many([company])).get(company, 0)

    async def apply_many(self, companies: list[str]) -> dict[str, int]:
        reads = await asyncio.to_thread(self._read_many, companies)
        progress = Progress({}, [], [])
        now = time.monotonic()
        counts: dict[str, int] = {}
        for company, (identity, start, envelopes, done) in reads.items():
            for envelope in envelopes:
                event = envelope.event
                if not isinstance(event, Receipt) or (status := STATUSES.get(event.status)) is None:
                    continue
                for wa_id in event.message_ids:
                    if await self._outbox.receipt(company, wa_id, status) is not None:
                        self.applied += 1
            counts[company] = len(envelopes)
            if len(envelopes) >= BATCH:
                self.wake(company)  # more to read
            if done <= start:
                continue
            self._positions[company] = (identity, done)
            # Past messages only (no receipts): the cursor is saved at most every SAVE_EVERY
            # seconds; reading them again after a kill costs nothing.
            if envelopes or now - self._saved_at.get(company, 0.0) > SAVE_EVERY:
                progress.cursors[(company, CONSUMER)] = (identity, done)
                self._saved_at[company] = now
        if progress:
            await asyncio.to_thread(self._cursors.save, progress)
        return counts

    def _read_many(self, companies: list[str]) -> dict[str, tuple[str, int, list[Envelope], int]]:
        reads = {}
        for company in companies:
            try:
                read = self._read(company)
            except (sqlite3.Error, OSError) as exc:
                log.error("receipts_failed", extra={"company": company,
                                                    "error": describe_error(exc)})  # fmt: skip
                continue
            if read is not None:
                reads[company] = read
        return reads

    def _read(self, company: str) -> tuple[str, int, list[Envelope], int] | None:
        path = self._state_dir / company / INBOX_FILE
        if company not in self._feed and not path.exists():
            return None
        identity = self._feed.identity(company, path)
        known = self._positions.get(company)
        start = (
            known[1] if known and known[0] == identity
            else self._cursors.get(company, CONSUMER, identity)
        )  # fmt: skip
        envelopes, done = self._feed.read(company, path, start, BATCH, "receipt")
        return identity, start, envelopes, done
