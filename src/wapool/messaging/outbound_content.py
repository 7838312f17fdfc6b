"""What ``outbound_messages`` holds of a message's content (text, media, file name).

With a master key configured, the content is sealed with the company's data key into
``sealed`` (``crypto.messages``) and ``text``, ``media`` and ``media_filename`` stay empty:
rows the daemon writes (the API's messages, mirrored from the outbox) are sealed from the
start; a producer's row, inserted in plaintext, is sealed by the daemon in the transaction
that claims it (``outbound_pg``). Without a master key, content is written and left in the
clear, as store rows are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from wapool.crypto.envelope import DataKey, RowUnreadable
from wapool.crypto.messages import Content, open_content, seal_content, unreadable
from wapool.db.pool import Conn, Database
from wapool.errors import ConfigError

log = logging.getLogger(__name__)

_SEAL = (
    "UPDATE outbound_messages SET sealed = %s, text = '', media = NULL, media_filename = NULL "
    "WHERE id::text = %s AND sealed IS NULL"
)


class ContentKeys:
    """The data keys outbound content is sealed with; companies whose key this process cannot
    use are logged (once per reason) and left out: their rows wait, never written in clear."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._unusable: dict[str, str] = {}

    async def prepare(self, companies: Iterable[str]) -> dict[str, DataKey] | None:
        """Company -> data key (None: no master key, content stays plaintext)."""
        if not self._db.cipher.enabled:
            return None
        wanted = sorted(set(companies))
        keys, unusable = await self._db.cipher.prepare(self._db, wanted)
        for company, why in unusable.items():
            if self._unusable.get(company) != why:
                log.error("outbound_key_unusable", extra={"company": company, "error": why})
        self._unusable = unusable
        return {c: keys[c] for c in wanted if c in keys}


def columns(
    keys: dict[str, DataKey] | None, company: str, message_id: str, content: Content
) -> tuple[str, bytes | None, str | None, bytes | None] | None:
    """(text, media, media_filename, sealed) to write; None when the company's content must
    be sealed and this process has no usable data key for it (the row waits)."""
    if keys is None:
        return content.text, content.media, content.filename, None
    dk = keys.get(company)
    if dk is None:
        return None
    return "", None, None, seal_content(dk, company, message_id, content)


async def read(
    conn: Conn, db: Database, company: str, message_id: str, row: tuple[Any, ...]
) -> Content:
    """The content of a row's (text, media, media_filename, sealed); ``RowUnreadable`` naming
    the company, table and message when it is sealed and does not open."""
    text, media, filename, sealed = row
    if sealed is None:
        return Content(text, bytes(media) if media is not None else None, filename)
    try:
        keys = await db.cipher.keys_of(conn, company)
        return open_content(keys, company, message_id, bytes(sealed))
    except (ValueError, KeyError) as exc:
        raise unreadable(company, "outbound_messages", message_id, str(exc)) from None
    except (RowUnreadable, ConfigError) as exc:
        raise unreadable(company, "outbound_messages", message_id, f"({exc})") from None


async def seal_in_place(
    conn: Conn, keys: dict[str, DataKey] | None, rows: list[tuple[str, str, Content]]
) -> int:
    """Seal (company, id, content) rows still in plaintext, in the caller's transaction."""
    if keys is None:
        return 0
    params = [
        (seal_content(keys[company], company, mid, content), mid)
        for company, mid, content in rows
        if company in keys
    ]
    if params:
        async with conn.cursor() as cur:
            await cur.executemany(_SEAL, params)
    return len(params)
