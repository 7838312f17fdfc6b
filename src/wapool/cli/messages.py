"""``wapool messages COMPANY [--follow] [--json] [--limit N]``: a company's recent messages.

Read from PostgreSQL (any host): inbound messages from ``inbound_messages`` (opened with the
master key when they are sealed, ``messaging.stored``); ``--follow`` then
waits on ``LISTEN wapool_inbound`` and prints new ones as they arrive. Other directions plug in
through ``_sources`` (outbound messages with their status, from ``cli.send``), each a function
returning rows that are merged by time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from wapool.cli.database import open_database
from wapool.cli.table import render
from wapool.db.pool import Database
from wapool.errors import CompanyNotFound
from wapool.messaging.inbound_mirror import CHANNEL
from wapool.messaging.stored import inbound_after
from wapool.registry.company import validate_company_id
from wapool.settings import Settings


@dataclass(frozen=True)
class Row:
    at: datetime
    direction: str
    chat: str
    kind: str
    status: str
    text: str
    message_id: str
    #: For ordering and --follow: the source's own increasing id.
    cursor: int
    #: Inbound: the whole event, as the webhook delivers it (in ``--json``).
    event: dict[str, Any] | None = None


#: (db, company, after cursor or None for the latest, limit) -> rows, oldest first.
Source = Callable[[Database, str, int | None, int], Awaitable[list[Row]]]


async def inbound_rows(db: Database, company: str, after: int | None, limit: int) -> list[Row]:
    return [
        Row(m.sent_at, "in", m.chat, m.kind, "from me" if m.from_me else "received", m.text,
            m.message_id, m.id, m.event)
        for m in await inbound_after(db, company, after, limit)
    ]  # fmt: skip


def _sources() -> list[Source]:
    from wapool.cli.send import outbound_rows  # it imports ``Row`` from here

    return [inbound_rows, outbound_rows]


def register(commands: Any) -> None:
    parser = commands.add_parser("messages", help="a company's recent messages")
    parser.add_argument("company")
    parser.add_argument("--limit", type=int, default=50, help="rows shown at first (50)")
    parser.add_argument("--follow", action="store_true", help="keep printing new messages")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(handler=_messages)


async def _messages(settings: Settings, args: argparse.Namespace) -> int:
    company = validate_company_id(args.company)
    async with open_database(settings) as db:
        if not await db.fetch("SELECT 1 FROM companies WHERE id = %s", (company,)):
            raise CompanyNotFound(f"no company {company!r}")
        cursors: dict[int, int | None] = {}
        rows = await _collect(db, company, cursors, max(1, args.limit), first=True)
        _print(rows, args.json, header=True)
        if not args.follow:
            return 0
        await _follow(settings, db, company, cursors, args.json)
    return 0


async def _collect(
    db: Database, company: str, cursors: dict[int, int | None], limit: int, *, first: bool
) -> list[Row]:
    rows: list[Row] = []
    for n, source in enumerate(_sources()):
        got = await source(db, company, None if first else cursors.get(n), limit)
        if got:
            cursors[n] = got[-1].cursor
        elif first:
            cursors[n] = 0
        rows.extend(got)
    rows.sort(key=lambda r: r.at)
    return rows[-limit:] if first else rows


async def _follow(
    settings: Settings, db: Database, company: str, cursors: dict[int, int | None], as_json: bool
) -> None:
    conninfo = settings.require_database_url()
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")
        gen = listener.notifies()
        while True:
            try:
                notice = await asyncio.wait_for(anext(gen), 5.0)  # a periodic look as well
            except TimeoutError:
                notice = None
            if notice is None or notice.payload == company:
                _print(await _collect(db, company, cursors, 1000, first=False), as_json)


def _print(rows: list[Row], as_json: bool, header: bool = False) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(asdict(row) | {"at": row.at.isoformat()}), flush=True)
        return
    table = [
        (r.at.strftime("%Y-%m-%d %H:%M:%S"), r.direction, r.chat, r.kind, r.status,
         r.text.replace("\n", " ")[:60])
        for r in rows
    ]  # fmt: skip
    if header:
        print(render(("TIME", "DIR", "CHAT", "KIND", "STATUS", "TEXT"), table, "(no messages)"))
    elif table:
        print(
            render(("TIME", "DIR", "CHAT", "KIND", "STATUS", "TEXT"), table, "").split("\n", 1)[1]
        )
    print(end="", flush=True)
