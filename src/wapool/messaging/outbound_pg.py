"""The local outbox and PostgreSQL's ``outbound_messages``: mirror, claim, adopt, release.

* **Mirror** — rows whose local version is ahead reach PostgreSQL in one transaction per batch
  (upsert by id; a row another daemon has claimed since is left alone). While PostgreSQL is
  down nothing waits for it: accepting and sending go on from the outbox, the mirror catches up.
* **Claim** — a producer's row (``claimed_by`` empty, ``queued``) is claimed by the daemon that
  holds the company's lease, checked in the same transaction, then copied to the outbox and
  sent. ``LISTEN wapool_outbound`` makes that immediate.
* **Adopt** — when this daemon starts driving a company: rows another daemon claimed and did not
  finish become ``uncertain`` (it may have sent them before it died); rows this daemon claimed
  but never copied are copied; the keys of the last ``KEY_DAYS`` days are copied, so an
  idempotency key used on another node still returns its first message. Only then does the API
  accept messages for the company.
* **Release** — at a clean stop, queued rows go back to unclaimed, for the next holder.

With a master key, content is sealed on the way in (``outbound_content``): the mirror writes
sealed rows, a claim seals the producer's plaintext row in the same transaction, and whatever is
copied to the outbox is opened first. A row whose content does not open is not sent: a queued
one becomes ``failed`` with the reason.

One module because these four share one rule — who may write a row (``claimed_by``) — and it is
only checkable when they are read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from wapool.backoff import Backoff
from wapool.crypto.envelope import DataKey, RowUnreadable
from wapool.crypto.messages import Content
from wapool.db.pool import Conn, Database
from wapool.errors import DatabaseUnavailable
from wapool.leases import Leases
from wapool.messaging import outbound_content
from wapool.messaging.outbound import Media, Outbound, Record, Status, recipient_jid
from wapool.messaging.outbox import Outbox

log = logging.getLogger(__name__)

CHANNEL = "wapool_outbound"
#: Seconds between two passes while busy: rows accepted meanwhile go in one transaction.
MIN_INTERVAL = 0.2
KEY_DAYS = 7
BATCH = 500
_COLUMNS = (
    "id::text, company_id, idempotency_key, to_jid, text, reply_to, "
    "CASE WHEN status = 'queued' THEN media END, media_mimetype, media_filename, "
    "extract(epoch FROM expires_at)::float8, status, reason, whatsapp_id, origin, claimed_by, "
    "sealed"
)
_UPSERT = """
INSERT INTO outbound_messages AS o (id, company_id, idempotency_key, to_jid, text, reply_to,
    media, media_mimetype, media_filename, expires_at, status, reason, whatsapp_id, origin,
    attempts, claimed_by, claimed_epoch, created_at, updated_at, sealed)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), %s, %s, %s, %s, %s, %s, %s,
    to_timestamp(%s), to_timestamp(%s), %s)
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason,
    whatsapp_id = EXCLUDED.whatsapp_id, attempts = EXCLUDED.attempts,
    updated_at = EXCLUDED.updated_at
WHERE o.claimed_by = EXCLUDED.claimed_by
"""


class OutboundSync:
    def __init__(
        self, db: Database, outbox: Outbox, leases: Leases, wake_sender: Callable[[str], None]
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._leases = leases
        self._me = leases.holder
        self._wake_sender = wake_sender
        self._keys = outbound_content.ContentKeys(db)
        self._wake = asyncio.Event()
        self._claim_due = True
        #: Companies adopted: the API accepts their messages.
        self.ready: set[str] = set()
        self.mirrored_rows = 0
        self.claimed_rows = 0

    def changed(self) -> None:
        """The outbox changed: mirror soon."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        delay = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay or 1.0)
            self._wake.clear()
            self.ready &= set(self._leases.held)
            try:
                await self.step()
            except DatabaseUnavailable:
                delay = backoff.next_delay()
                continue
            except Exception as exc:  # never the daemon's end: logged, retried with backoff
                log.error("outbound_sync_failed", extra={"error": str(exc)}, exc_info=exc)
                delay = backoff.next_delay()
                continue
            backoff.reset()
            delay = 0.0
            with contextlib.suppress(TimeoutError):  # a busy outbox: one batch per interval
                await asyncio.wait_for(stop.wait(), MIN_INTERVAL)

    async def step(self) -> None:
        for company in sorted(set(self._leases.held) - self.ready):
            await self.adopt(company)
        if self._claim_due:
            self._claim_due = False
            await self.claim()
        while await self.mirror() == BATCH:
            pass

    async def listen(self, stop: asyncio.Event) -> None:
        """``LISTEN wapool_outbound``: a producer's row is claimed at once."""
        backoff = Backoff(base=0.5, cap=30.0)
        while not stop.is_set():
            try:
                async with self._db.pool.connection() as conn:
                    await conn.set_autocommit(True)
                    await conn.execute(f"LISTEN {CHANNEL}")
                    backoff.reset()
                    self._claim_due = True
                    self._wake.set()
                    while not stop.is_set():
                        async for _ in conn.notifies(timeout=1.0):
                            self._claim_due = True
                            self._wake.set()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.debug("outbound_listener_retry", extra={"error": type(exc).__name__})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff.next_delay())

    async def mirror(self) -> int:
        rows = self._outbox.unmirrored(BATCH)
        if not rows:
            return 0
        held = dict(self._leases.held)
        keys = await self._keys.prepare(r.company for r, _, _ in rows)
        params = []
        versions: dict[str, int] = {}
        for r, version, media in rows:
            content = Content(r.text, media, r.media_filename)
            written = outbound_content.columns(keys, r.company, r.id, content)
            if written is None:
                continue  # no usable data key here: it waits, never written in plaintext
            text, media, filename, sealed = written
            params.append(
                (r.id, r.company, r.idempotency_key, r.to, text, r.reply_to, media,
                 r.media_mimetype, filename, r.expires_at, r.status.value, r.reason,
                 r.whatsapp_id, r.origin, r.attempts, self._me, held.get(r.company),
                 r.created_at, r.updated_at, sealed)
            )  # fmt: skip
            versions[r.id] = version

        async def work(conn: Conn) -> None:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.executemany(_UPSERT, params)
                return
            except psycopg.errors.UniqueViolation:
                pass  # an idempotency key another node used: row by row, skip that one
            for row in params:
                try:
                    async with conn.transaction():
                        await conn.execute(_UPSERT, row)
                except psycopg.errors.UniqueViolation:
                    log.error("outbound_key_conflict", extra={"company": row[1], "id": row[0]})

        if params:
            await self._db.run(work)
            await self._outbox.mirrored(versions)
        self.mirrored_rows += len(params)
        return len(params)

    async def claim(self) -> None:
        """Claim producers' rows for the companies this daemon drives (lease checked)."""
        companies = sorted(self.ready & set(self._leases.held))
        if not companies:
            return
        keys = await self._keys.prepare(companies)

        async def work(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(
                "UPDATE outbound_messages o SET claimed_by = %(me)s, claimed_epoch = l.epoch, "
                "updated_at = now() FROM company_leases l "
                "WHERE l.company_id = o.company_id AND l.holder = %(me)s "
                "AND l.expires_at > now() AND o.id IN (SELECT id FROM outbound_messages "
                "WHERE company_id = ANY(%(companies)s) AND claimed_by IS NULL "
                "AND status = 'queued' ORDER BY created_at LIMIT %(limit)s "
                "FOR UPDATE SKIP LOCKED) RETURNING o.id",
                {"me": self._me, "companies": companies, "limit": BATCH},
            )
            ids = [r[0] for r in await cur.fetchall()]
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM outbound_messages WHERE id = ANY(%s) ORDER BY created_at",
                (ids,),
            )
            return await self._readable(conn, await cur.fetchall(), keys)

        rows = await self._db.run(work)
        for row in rows:
            await self._copy(row)
        self.claimed_rows += len(rows)
        if len(rows) == BATCH:
            self._claim_due = True
            self._wake.set()

    async def adopt(self, company: str) -> None:
        """Take over ``company``'s outbound rows before accepting its messages."""
        me = self._me
        keys = await self._keys.prepare([company])

        async def work(conn: Conn) -> list[tuple[Any, ...]]:
            await conn.execute(
                "UPDATE outbound_messages SET status = 'uncertain', updated_at = now(), "
                "reason = 'taken over from ' || claimed_by || ', which stopped without "
                "handing it over: it may have been sent; not repeated unless asked' "
                "WHERE company_id = %s AND claimed_by <> %s AND status IN ('queued', 'sending')",
                (company, me),
            )
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM outbound_messages WHERE company_id = %s AND "
                f"((claimed_by = %s AND status = 'queued') OR (idempotency_key IS NOT NULL "
                f"AND created_at > now() - make_interval(days => %s))) ORDER BY created_at",
                (company, me, KEY_DAYS),
            )
            return await self._readable(conn, await cur.fetchall(), keys)

        rows = await self._db.run(work)
        for row in rows:
            await self._copy(row)
        self.ready.add(company)
        if rows:  # one line per company with something to take over, not per company
            log.info("outbound_adopted", extra={"company": company, "rows": len(rows)})

    async def release(self, companies: list[str]) -> None:
        """Give back queued rows this daemon claimed (a clean stop), so the next holder sends
        them; they leave the outbox."""
        if not companies:
            return

        async def work(conn: Conn) -> list[str]:
            cur = await conn.execute(
                "UPDATE outbound_messages SET claimed_by = NULL, claimed_epoch = NULL "
                "WHERE claimed_by = %s AND status = 'queued' AND company_id = ANY(%s) "
                "RETURNING id::text",
                (self._me, companies),
            )
            return [str(r[0]) for r in await cur.fetchall()]

        await self.mirror()
        ids = await self._db.run(work)
        await self._outbox.forget(ids)
        self.ready -= set(companies)

    async def look_up(self, company: str, message_id: str) -> Record | None:
        """A message as PostgreSQL knows it (for a company this daemon does not drive)."""
        rows = await self._db.fetch(
            "SELECT id::text, company_id, status, to_jid, idempotency_key, whatsapp_id, reason, "
            "extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8 "
            "FROM outbound_messages WHERE company_id = %s AND id::text = %s",
            (company, message_id),
        )
        if not rows:
            return None
        i, c, status, to, key, wa, reason, created, updated = rows[0]
        return Record(i, c, 0, to, "", Status(status), created, updated, key,
                      whatsapp_id=wa, reason=reason)  # fmt: skip

    async def _readable(
        self, conn: Conn, rows: list[tuple[Any, ...]], keys: dict[str, DataKey] | None
    ) -> list[tuple[Any, ...]]:
        """The rows with their content opened (``_COLUMNS`` without ``sealed``); this daemon's
        queued rows still in plaintext are sealed here, in the caller's transaction. A queued
        row whose content does not open becomes ``failed``, saying why."""
        out: list[tuple[Any, ...]] = []
        plain: list[tuple[str, str, Content]] = []
        for row in rows:
            mid, company, status, claimer = row[0], row[1], row[10], row[14]
            try:
                content = await outbound_content.read(conn, self._db, company, mid,
                                                      (row[4], row[6], row[8], row[15]))  # fmt: skip
            except RowUnreadable as exc:
                log.error("outbound_unreadable", extra={"company": company, "id": mid,
                                                        "error": str(exc)})  # fmt: skip
                content = Content("")
                if status == Status.QUEUED:
                    status = Status.FAILED.value
                    reason = f"its content does not decrypt: {exc}"
                    await conn.execute(
                        "UPDATE outbound_messages SET status = 'failed', reason = %s, "
                        "updated_at = now() WHERE id::text = %s",
                        (reason, mid),
                    )
                    row = (*row[:10], status, reason, *row[12:])
            else:
                if row[15] is None and claimer == self._me and status == Status.QUEUED:
                    plain.append((company, mid, content))
            media = content.media if status == Status.QUEUED else None
            out.append((*row[:4], content.text, row[5], media, row[7], content.filename,
                        *row[9:15]))  # fmt: skip
        await outbound_content.seal_in_place(conn, keys, plain)
        return out

    async def _copy(self, row: tuple[Any, ...]) -> None:
        (mid, company, key, to, text, reply_to, media, mimetype, filename, expires, status,
         reason, wa_id, origin, _claimer) = row  # fmt: skip
        if status == Status.QUEUED:
            try:
                to = recipient_jid(to)
            except ValueError as exc:  # a producer's row no send could ever take
                await self._db.execute(
                    "UPDATE outbound_messages SET status = 'failed', updated_at = now(), "
                    "reason = %s WHERE id::text = %s",
                    (f"bad to_jid: {exc}", mid),
                )
                return
        message = Outbound(
            company, to, text, reply_to,
            Media(bytes(media), mimetype, filename) if media is not None else None,
            key, expires, mid, origin,
        )  # fmt: skip
        record, new = await self._outbox.accept(
            message, status=Status(status), synced=True, reason=reason, whatsapp_id=wa_id
        )
        if not new and record.id != mid and status == Status.QUEUED:
            await self._db.execute(
                "UPDATE outbound_messages SET status = 'failed', updated_at = now(), "
                "reason = 'duplicate idempotency key: message ' || %s || ' has it' "
                "WHERE id::text = %s",
                (record.id, mid),
            )
        elif new and status == Status.QUEUED:
            self._wake_sender(company)
