"""``wapool send COMPANY TO TEXT [--wait]``: queue a message through ``outbound_messages``.

The row is claimed and sent by the daemon that drives the company, from any host (with a master
key configured here, its text is sealed before it is inserted; otherwise the daemon seals it
when it claims it); with
``--wait`` every status change is printed until the message is read, failed or uncertain, or
the timeout passes (exit 0 if it was sent by then, else 1). ``--key`` makes the command idempotent: run twice, it sends once.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import psycopg

from wapool.cli.database import open_database
from wapool.cli.messages import Row
from wapool.crypto.messages import Content
from wapool.db.pool import Conn, Database
from wapool.errors import WapoolError
from wapool.messaging import outbound_content
from wapool.messaging.outbound import recipient_jid
from wapool.messaging.request import MAX_KEY, MAX_TEXT
from wapool.registry.repository import CompanyRepository
from wapool.settings import Settings

#: Statuses after which nothing changes by itself.
_LAST = frozenset({"read", "failed", "uncertain"})


def register(commands: Any) -> None:
    parser = commands.add_parser("send", help="send a text message through a company's session")
    parser.add_argument("company_id", metavar="COMPANY")
    parser.add_argument("to", metavar="TO", help="phone number (+49 170 1234567) or JID")
    parser.add_argument("text", metavar="TEXT")
    parser.add_argument("--key", help="idempotency key: the same key never sends twice")
    parser.add_argument("--wait", action="store_true", help="print the status as it changes")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    parser.set_defaults(handler=_send)


async def _send(settings: Settings, args: argparse.Namespace) -> int:
    try:
        to = recipient_jid(args.to)
    except ValueError as exc:
        raise WapoolError(f"TO {exc}") from None
    if not args.text or len(args.text) > MAX_TEXT:
        raise WapoolError(f"TEXT must be 1 to {MAX_TEXT} characters")
    if args.key is not None and not 1 <= len(args.key) <= MAX_KEY:
        raise WapoolError(f"--key must be 1 to {MAX_KEY} characters")
    async with open_database(settings) as db:
        await CompanyRepository(db).get(args.company_id)  # unknown: one clear line
        new_id = str(uuid.uuid4())
        keys = await outbound_content.ContentKeys(db).prepare([args.company_id])
        written = outbound_content.columns(keys, args.company_id, new_id, Content(args.text))
        # No usable data key here: plaintext, as any producer's row (the daemon seals it).
        text, sealed = (written[0], written[3]) if written else (args.text, None)

        async def insert(conn: Conn) -> str:
            cur = await conn.execute(
                "INSERT INTO outbound_messages (id, company_id, to_jid, text, idempotency_key, "
                "origin, sealed) VALUES (%s, %s, %s, %s, %s, 'cli', %s) ON CONFLICT DO NOTHING "
                "RETURNING id::text",
                (new_id, args.company_id, to, text, args.key, sealed),
            )
            row = await cur.fetchone()
            if row is None:  # the key was used: that message
                cur = await conn.execute(
                    "SELECT id::text FROM outbound_messages WHERE company_id = %s "
                    "AND idempotency_key = %s",
                    (args.company_id, args.key),
                )
                row = await cur.fetchone()
            assert row is not None
            return str(row[0])

        try:
            message_id = await db.run(insert)
        except psycopg.errors.IntegrityError as exc:
            raise WapoolError(f"refused by PostgreSQL: {exc.diag.message_primary}") from None
        print(f"message {message_id} queued for {to}", flush=True)
        if not args.wait:
            return 0
        return await _follow(db, message_id, args.timeout)


async def outbound_rows(db: Database, company: str, after: int | None, limit: int) -> list[Row]:
    """``wapool messages``' outbound rows with their status; the cursor is the last change
    (microseconds), so ``--follow`` prints a message again when its status moves."""
    columns = (
        "(extract(epoch FROM updated_at) * 1e6)::bigint, created_at, to_jid, "
        "CASE WHEN media_mimetype IS NULL THEN 'text' ELSE split_part(media_mimetype, '/', 1) "
        "END, status, text, id::text, media_filename, sealed"
    )
    if after is None:
        sql = (f"SELECT * FROM (SELECT {columns} FROM outbound_messages WHERE company_id = %s "
               "ORDER BY created_at DESC LIMIT %s) t ORDER BY 1")  # fmt: skip
        params: tuple[Any, ...] = (company, limit)
    else:
        sql = (f"SELECT {columns} FROM outbound_messages WHERE company_id = %s "
               "AND updated_at > to_timestamp(%s / 1e6) ORDER BY updated_at LIMIT %s")  # fmt: skip
        params = (company, after, limit)

    async def work(conn: Conn) -> list[Row]:
        cur = await conn.execute(sql, params)
        out = []
        for cursor, at, to, kind, status, text, mid, filename, sealed in await cur.fetchall():
            content = await outbound_content.read(conn, db, company, mid,
                                                  (text, None, filename, sealed))  # fmt: skip
            out.append(Row(at, "out", to, kind, status, content.text, mid, int(cursor)))
        return out

    return await db.run(work)


async def _follow(db: Any, message_id: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    shown = None
    while time.monotonic() < deadline:
        rows = await db.fetch(
            "SELECT status, coalesce(reason, ''), coalesce(whatsapp_id, '') "
            "FROM outbound_messages WHERE id::text = %s",
            (message_id,),
        )
        if not rows:
            raise WapoolError("the message disappeared (company removed?)")
        status, reason, wa_id = rows[0]
        if (status, reason) != shown:
            shown = (status, reason)
            detail = f" {wa_id}" if wa_id and status in ("sent", "delivered", "read") else ""
            print(f"{status}{detail}{': ' + reason if reason else ''}", flush=True)
        if status in _LAST:
            return 0 if status == "read" else 1
        await asyncio.sleep(0.2)
    status = shown[0] if shown else "unknown"
    print(f"still {status} after {timeout:g} s", flush=True)
    return 0 if status in ("sent", "delivered") else 1
