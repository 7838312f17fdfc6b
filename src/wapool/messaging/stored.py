"""Reading ``inbound_messages`` back, sealed or not.

With encryption at rest, an application that reads ``inbound_messages`` in SQL sees the
routing columns (company, ids, chat, sender, kind, times) but not the text or the event: those
are sealed with the company's data key. This is the supported way to read them from Python
(``wapool messages --json`` is built on it; docs/messaging.md)::

    from wapool.db.pool import Database
    from wapool.messaging.stored import inbound_after
    from wapool.settings import load_settings

    db = Database.from_settings(load_settings())  # needs the master key, as the daemon does
    await db.open(wait=True)
    for message in await inbound_after(db, "acme", after=41, limit=100):
        print(message.id, message.chat, message.event["text"])

A row that does not open (moved, altered, or the key is missing) raises ``RowUnreadable``
naming the company, table and message: it is never skipped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wapool.crypto.envelope import RowUnreadable
from wapool.crypto.messages import INBOUND, open_event, unreadable
from wapool.db.pool import Conn, Database
from wapool.errors import ConfigError

_COLUMNS = "id, message_id, sent_at, chat_jid, sender_jid, kind, from_me, event, sealed"


@dataclass(frozen=True)
class StoredInbound:
    #: ``inbound_messages.id``: increasing; read "everything after N" with it.
    id: int
    message_id: str
    sent_at: datetime
    chat: str
    sender: str
    kind: str
    from_me: bool
    #: The whole event, as the webhook delivers it (docs/messaging.md).
    event: dict[str, Any]

    @property
    def text(self) -> str:
        return str(self.event.get("text", ""))


async def inbound_after(
    db: Database, company: str, after: int | None, limit: int
) -> list[StoredInbound]:
    """The company's messages with ``id`` above ``after``, oldest first, at most ``limit``;
    with ``after`` None, the latest ``limit`` (oldest first)."""

    async def work(conn: Conn) -> list[StoredInbound]:
        if after is None:
            cur = await conn.execute(
                f"SELECT * FROM (SELECT {_COLUMNS} FROM inbound_messages WHERE company_id = %s "
                "ORDER BY id DESC LIMIT %s) t ORDER BY id",
                (company, limit),
            )
        else:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM inbound_messages WHERE company_id = %s AND id > %s "
                "ORDER BY id LIMIT %s",
                (company, after, limit),
            )
        return [await _opened(conn, db, company, row) for row in await cur.fetchall()]

    return await db.run(work)


async def _opened(conn: Conn, db: Database, company: str, row: tuple[Any, ...]) -> StoredInbound:
    i, mid, sent_at, chat, sender, kind, from_me, event, sealed = row
    if sealed is not None:
        try:
            keys = await db.cipher.keys_of(conn, company)
            event = json.loads(open_event(keys, company, mid, bytes(sealed)))
        except ValueError as exc:
            raise unreadable(company, INBOUND, mid, str(exc)) from None
        except (RowUnreadable, ConfigError) as exc:
            raise unreadable(company, INBOUND, mid, f"({exc})") from None
    return StoredInbound(int(i), mid, sent_at, chat, sender, kind, bool(from_me), dict(event))
