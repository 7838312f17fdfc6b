"""Inbox -> ``inbound_messages``: the mirror's part that carries inbound messages to PostgreSQL.

It rides the key mirror's loop (``Mirror.parts``): the same task, pool, backoff and outage
handling, woken by the workers' inbox notices. Each tick reads, per company, the messages after
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
import contextlib
import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg.types.json import Jsonb

from wapool.db.pool import Conn, Database
from wapool.leases import Fence
from wapool.messaging.cursors import Cursors, Progress
from wapool.messaging.inbox import InboxReader
from wapool.messaging.model import Envelope, InboundMessage, to_json
from wapool.observability.redact import describe_error

log = logging.getLogger(__name__)

CONSUMER = "postgres"
CHANNEL = "wapool_inbound"
BATCH = 2000

# A company deleted from the registry (not just removed) has no row to refer to: its messages
# stay in the local inbox (and reach the webhook) instead of failing everyone's batch.
_INSERT = (
    "INSERT INTO inbound_messages (company_id, message_id, chat_jid, sender_jid, from_me, "
    "is_group, kind, body, sent_at, received_at, event, holder, epoch) "
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s "
    "WHERE EXISTS (SELECT 1 FROM companies WHERE id = %s) "
    "ON CONFLICT (company_id, message_id) DO NOTHING"
)


@dataclass
class _Source:
    company: str
    path: Path
    reader: InboxReader | None = None
    identity: str = ""
    cursor: int | None = None
    high: int = 0


@dataclass
class _Batch:
    source: _Source
    rows: list[Envelope]
    upto: int


class InboundMirror:
    def __init__(self, db: Database, cursors: Cursors, fence: Fence | None = None) -> None:
        self._db = db
        self._cursors = cursors
        self.fence = fence
        self._sources: dict[str, _Source] = {}
        self.applied = 0
        self.failures = 0

    def add(self, company: str, inbox: Path) -> None:
        self._sources.setdefault(company, _Source(company, inbox))

    def remove(self, company: str) -> None:
        source = self._sources.pop(company, None)
        if source is not None and source.reader is not None:
            source.reader.close()

    @property
    def pending(self) -> int:
        """Events written after the cursors, as last seen (0: caught up)."""
        return sum(max(0, s.high - (s.cursor or 0)) for s in self._sources.values())

    async def tick(self) -> int:
        batches = await asyncio.to_thread(self._collect)
        if not batches:
            return 0
        await self._db.run(lambda conn: self._apply(conn, batches))
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
        for source in list(self._sources.values()):
            try:
                batch = self._read(source)
            except (sqlite3.Error, OSError) as exc:
                log.error(
                    "inbound_read_failed",
                    extra={"company": source.company, "error": describe_error(exc)},
                )
                if source.reader is not None:
                    with contextlib.suppress(sqlite3.Error):
                        source.reader.close()
                source.reader, source.cursor = None, None
                continue
            if batch is not None:
                batches.append(batch)
        return batches

    def _read(self, source: _Source) -> _Batch | None:
        if source.reader is None:
            source.reader = InboxReader(source.path)
            source.identity = source.reader.identity()
        if source.cursor is None:
            source.cursor = self._cursors.get(source.company, CONSUMER, source.identity)
        source.high = source.reader.high_seq()
        if source.high <= source.cursor:
            return None
        rows = [
            e for e in source.reader.messages_after(source.cursor, BATCH) if e.seq <= source.high
        ]
        upto = rows[-1].seq if len(rows) >= BATCH else source.high
        return _Batch(source, rows, upto)

    async def _apply(self, conn: Conn, batches: list[_Batch]) -> None:
        companies = sorted({b.source.company for b in batches})
        if self.fence is not None:
            await self.fence.refused(conn, companies)  # locks the lease rows FOR SHARE
        holder = self.fence.holder if self.fence is not None else ""
        notify: set[str] = set()
        params = []
        for batch in batches:
            epoch = self.fence.epochs.get(batch.source.company, 0) if self.fence else 0
            for envelope in batch.rows:
                message = envelope.event
                assert isinstance(message, InboundMessage)
                params.append(_row(message, envelope.received_at, holder, epoch))
            if batch.rows:
                notify.add(batch.source.company)
        if params:
            async with conn.cursor() as cur:
                await cur.executemany(_INSERT, params)
        for company in sorted(notify):
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, company))


def _row(
    message: InboundMessage, received_at: float, holder: str, epoch: int
) -> tuple[object, ...]:
    return (
        message.company, message.message_id, message.chat, message.sender, message.from_me,
        message.is_group, message.kind, message.text,
        datetime.fromtimestamp(message.timestamp, UTC), datetime.fromtimestamp(received_at, UTC),
        Jsonb(to_json(message), dumps=lambda v: json.dumps(v, ensure_ascii=False)),
        holder, epoch, message.company,
    )  # fmt: skip
