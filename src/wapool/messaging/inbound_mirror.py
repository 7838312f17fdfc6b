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

With a master key, each event is sealed with its company's data key (``crypto.messages``) in
the worker thread that builds the parameters; ``body`` and ``event`` then stay empty. A company
whose data key this process cannot use keeps its messages in the inbox (and retries), never
writes them in plaintext; one without a ``companies`` row is skipped as before.

One module over 250 lines: reading, sealing and inserting a batch share one rule (a cursor
moves only past rows that are in PostgreSQL or skipped for good), checkable only together.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from wapool.crypto.envelope import DataKey
from wapool.crypto.messages import seal_event
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
#: A company whose data key this process cannot use is tried again this often.
KEY_RETRY_SECONDS = 5.0

# A company deleted from the registry (not just removed) has no row to refer to: its messages
# stay in the local inbox (and reach the webhook) instead of failing everyone's batch.
_INSERT = (
    "INSERT INTO inbound_messages (company_id, message_id, chat_jid, sender_jid, from_me, "
    "is_group, kind, body, sent_at, received_at, event, holder, epoch, sealed) "
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s "
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
    #: Companies of rows left out for want of a data key (sealing on, none in ``keys``).
    keyless: set[str]


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
        #: Companies of rows seen without a data key: prepared at the next tick.
        self._want_keys: set[str] = set()
        #: Companies whose data key is unusable here, and why (logged once per reason); their
        #: inboxes are read again every ``KEY_RETRY_SECONDS``.
        self._unusable: dict[str, str] = {}
        self._parked: dict[str, float] = {}

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
        keys = await self._keys()
        batches = await asyncio.to_thread(self._collect, keys)
        if not batches:
            return 0
        try:
            if keys is not None and any(b.keyless for b in batches):
                batches = await self._without_keyless(batches)
                if not batches:
                    return 0
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

    async def _keys(self) -> dict[str, DataKey] | None:
        """The data keys of the companies this tick may read (None: no master key, plaintext)."""
        if not self._db.cipher.enabled:
            return None
        now = time.monotonic()
        for company, at in list(self._parked.items()):
            if at <= now:  # try its key again
                del self._parked[company]
                self._dirty.add(company)
        wanted = sorted({c for c in self._dirty if c in self._sources} | self._want_keys)
        keys, unusable = await self._db.cipher.prepare(self._db, wanted)
        for company, why in unusable.items():
            if self._unusable.get(company) != why:  # once per company and reason
                self._unusable[company] = why
                log.error("inbound_key_unusable", extra={"company": company, "error": why})
            if company in self._dirty:  # its inbox waits; not read again at every tick
                self._dirty.discard(company)
                self._parked[company] = now + KEY_RETRY_SECONDS
        for company in keys.keys() & self._unusable.keys():
            del self._unusable[company]
        self._want_keys -= keys.keys()
        return {c: keys[c] for c in wanted if c in keys}

    async def _without_keyless(self, batches: list[_Batch]) -> list[_Batch]:
        """Batches with rows of companies that have a ``companies`` row but no data key here
        wait (read again at the next tick); rows of companies without one are skipped."""
        keyless: set[str] = set().union(*(b.keyless for b in batches))
        rows = await self._db.fetch(
            "SELECT id FROM companies WHERE id = ANY(%s)", (sorted(keyless),)
        )
        existing = {str(r[0]) for r in rows}
        if not existing:
            return batches
        self._want_keys |= existing
        waiting = [b for b in batches if b.keyless & existing]
        self._dirty.update(b.source.company for b in waiting)
        return [b for b in batches if not b.keyless & existing]

    def _collect(self, keys: dict[str, DataKey] | None) -> list[_Batch]:
        batches = []
        dirty, self._dirty = self._dirty, set()
        total = 0
        for source in [s for c in sorted(dirty) if (s := self._sources.get(c))]:
            if total >= MAX_ROWS_PER_TICK:
                self._dirty.add(source.company)  # next tick
                continue
            try:
                batch = self._read(source, keys)
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

    def _read(self, source: _Source, keys: dict[str, DataKey] | None) -> _Batch | None:
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
        # The parameters are built (and sealed) here, in the worker thread, not on the loop.
        params: list[tuple[object, ...]] = []
        keyless: set[str] = set()
        for envelope in rows:
            company = envelope.data["company"]
            if keys is None:
                params.append(_row(envelope, holder, epoch, None))
            elif (dk := keys.get(company)) is not None:
                params.append(_row(envelope, holder, epoch, dk))
            else:
                keyless.add(company)
        return _Batch(source, rows, upto, params, keyless)

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


def _row(envelope: Envelope, holder: str, epoch: int, dk: DataKey | None) -> tuple[object, ...]:
    """The insert's parameters, from the inbox's JSON as written (no dataclasses rebuilt);
    with a data key, the event sealed and ``body`` and ``event`` left empty."""
    m = envelope.data
    text, sealed = m["text"], None
    event_param: str | None = envelope.body
    if dk is not None:
        text, event_param = "", None
        sealed = seal_event(dk, m["company"], m["message_id"], envelope.body)
    return (
        m["company"], m["message_id"], m["chat"], m["sender"], m["from_me"], m["is_group"],
        m["kind"], text, datetime.fromtimestamp(m["timestamp"], UTC),
        datetime.fromtimestamp(envelope.received_at, UTC), event_param, holder, epoch, sealed,
        m["company"],
    )  # fmt: skip
