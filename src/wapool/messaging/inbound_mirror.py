"""Inbox -> ``inbound_messages``: the mirror's part that carries inbound messages to PostgreSQL.

It rides the key mirror's loop (``Mirror.parts``): the same task, pool, backoff and outage
handling; a tick reads only the inboxes the workers said advanced (``touch``), not every inbox
(the loop ticks every 20 ms: reading a hundred idle inboxes each time would cost more than the
messages). Each tick reads, per company, the messages after
its ``postgres`` cursor (``cursors``), inserts them all in one PostgreSQL transaction
(``ON CONFLICT DO NOTHING`` on company + message id), notifies ``wapool_inbound`` once per
company in the batch, and only then moves the cursors. A crash between the commit and the
cursor write replays the batch: at least once into PostgreSQL, once in the table.

The transaction locks the companies' lease rows (``Fence``, ``FOR SHARE``) and records the
holder and epoch with each row. A stale epoch does not refuse the rows, unlike key images: a
message is a fact the session received, an insert never overwrites what the current holder
wrote, and refusing it would lose a message whatsmeow already acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from wapool.db.pool import Conn, Database
from wapool.leases import Fence
from wapool.messaging.cursors import Cursors, Progress
from wapool.messaging.feed import InboxFeed
from wapool.messaging.model import Envelope
from wapool.observability.redact import describe_error

log = logging.getLogger(__name__)

CONSUMER = "postgres"
CHANNEL = "wapool_inbound"
#: Rows read from one inbox per tick, and at most in one PostgreSQL transaction (a backlog of a
#: hundred companies after an outage drains in several ticks, each well within its timeout).
BATCH = 2000
MAX_ROWS_PER_TICK = 10_000

# A company deleted from the registry (not just removed) has no row to refer to: its messages
# stay in the local inbox (and reach the webhook) instead of failing everyone's batch.
_INSERT = (
    "INSERT INTO inbound_messages (company_id, message_id, chat_jid, sender_jid, from_me, "
    "is_group, kind, body, sent_at, received_at, event, holder, epoch) "
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s "
    "WHERE EXISTS (SELECT 1 FROM companies WHERE id = %s) "
    "ON CONFLICT (company_id, message_id) DO NOTHING"
)


@dataclass
class _Source:
    company: str
    path: Path
    identity: str = ""
    cursor: int | None = None
    high: int = 0


@dataclass
class _Batch:
    source: _Source
    rows: list[Envelope]
    upto: int
    params: list[tuple[object, ...]]


class InboundMirror:
    def __init__(
        self, db: Database, cursors: Cursors, fence: Fence | None = None,
        feed: InboxFeed | None = None,
    ) -> None:  # fmt: skip
        self._db = db
        self._cursors = cursors
        self._feed = feed or InboxFeed()
        self.fence = fence
        self._sources: dict[str, _Source] = {}
        #: Companies whose inbox may hold rows after the cursor (notified, or not yet read).
        self._dirty: set[str] = set()
        self.applied = 0
        self.failures = 0

    def add(self, company: str, inbox: Path) -> None:
        self._sources.setdefault(company, _Source(company, inbox))
        self._dirty.add(company)

    def touch(self, company: str) -> None:
        """The company's inbox advanced: read it at the next tick (others are not read)."""
        self._feed.touch(company)
        self._dirty.add(company)

    def remove(self, company: str) -> None:
        self._sources.pop(company, None)

    @property
    def pending(self) -> int:
        """Events written after the cursors, as last seen (0: caught up)."""
        return sum(max(0, s.high - (s.cursor or 0)) for s in self._sources.values())

    async def tick(self) -> int:
        batches = await asyncio.to_thread(self._collect)
        if not batches:
            return 0
        try:
            rows = sum(len(b.rows) for b in batches)
            timeout = self._db.query_timeout + rows / 5_000
            await self._db.run(lambda conn: self._apply(conn, batches), timeout=timeout)
        except BaseException:
            self._dirty.update(b.source.company for b in batches)  # not applied: again
            raise
        progress = Progress.empty()
        for batch in batches:
            progress.cursors[(batch.source.company, CONSUMER)] = (batch.source.identity, batch.upto)
        await asyncio.to_thread(self._cursors.save, progress)
        for batch in batches:
            batch.source.cursor = batch.upto
        count = sum(len(b.rows) for b in batches)
        self.applied += count
        return count

    def _collect(self) -> list[_Batch]:
        batches = []
        dirty, self._dirty = self._dirty, set()
        total = 0
        for source in [s for c in sorted(dirty) if (s := self._sources.get(c))]:
            if total >= MAX_ROWS_PER_TICK:
                self._dirty.add(source.company)  # next tick
                continue
            try:
                batch = self._read(source)
            except (sqlite3.Error, OSError) as exc:
                log.error(
                    "inbound_read_failed",
                    extra={"company": source.company, "error": describe_error(exc)},
                )
                source.identity, source.cursor = "", None
                self._dirty.add(source.company)  # try again next tick
                continue
            if batch is not None:
                batches.append(batch)
                total += len(batch.rows)
        return batches

    def _read(self, source: _Source) -> _Batch | None:
        if not source.identity:
            source.identity = self._feed.identity(source.company, source.path)
        if source.cursor is None:
            source.cursor = self._cursors.get(source.company, CONSUMER, source.identity)
        rows, source.high = self._feed.read(
            source.company, source.path, source.cursor, BATCH, "message"
        )
        if source.high <= source.cursor:
            return None
        upto = source.high
        if len(rows) >= BATCH:
            self._dirty.add(source.company)  # more to read: the next tick, notice or not
        holder = self.fence.holder if self.fence is not None else ""
        epoch = self.fence.epochs.get(source.company, 0) if self.fence is not None else 0
        # The parameters are built here, in the worker thread, not on the event loop.
        return _Batch(source, rows, upto, [_row(e, holder, epoch) for e in rows])

    async def _apply(self, conn: Conn, batches: list[_Batch]) -> None:
        companies = sorted({b.source.company for b in batches})
        if self.fence is not None:
            await self.fence.refused(conn, companies)  # locks the lease rows FOR SHARE
        notify: set[str] = set()
        params: list[tuple[object, ...]] = []
        for batch in batches:
            params.extend(batch.params)
            if batch.rows:
                notify.add(batch.source.company)
        if params:
            async with conn.cursor() as cur:
                await cur.executemany(_INSERT, params)
        for company in sorted(notify):
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, company))


def _row(envelope: Envelope, holder: str, epoch: int) -> tuple[object, ...]:
    """The insert's parameters, from the inbox's JSON as written (no dataclasses rebuilt)."""
    m = envelope.data
    return (
        m["company"], m["message_id"], m["chat"], m["sender"], m["from_me"], m["is_group"],
        m["kind"], m["text"], datetime.fromtimestamp(m["timestamp"], UTC),
        datetime.fromtimestamp(envelope.received_at, UTC), envelope.body, holder, epoch,
        m["company"],
    )  # fmt: skip
