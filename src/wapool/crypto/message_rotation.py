"""Online re-encryption of message bodies: one bounded batch of ``inbound_messages`` or
``outbound_messages`` rows not sealed with the company's current data key (plaintext, or an
older data key), re-sealed in the caller's short transaction.

Each batch walks the table in key order from where the last one stopped (so it resumes, and a
rerun selects nothing once all is sealed) and rewrites a row only if it still holds what was
read: a row claimed, sealed or changed meanwhile is left as it is now.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from wapool.crypto.envelope import DataKey
from wapool.crypto.messages import (
    INBOUND,
    OUTBOUND,
    Content,
    open_content,
    open_event,
    prefix,
    seal_content,
    seal_event,
    unreadable,
)
from wapool.db.pool import Conn, Database

#: (conn, db, company, current data key, position or None, limit)
#: -> (rewritten, skipped, where to continue or None when done)
Step = Callable[
    [Conn, Database, str, DataKey, str | None, int], Awaitable[tuple[int, int, str | None]]
]
#: Outbound rows may carry media: fewer per transaction.
OUTBOUND_BATCH = 100
_NO_UUID = "00000000-0000-0000-0000-000000000000"


async def inbound_batch(
    conn: Conn, db: Database, company: str, current: DataKey, after: str | None, limit: int
) -> tuple[int, int, str | None]:
    head = prefix(current)
    cur = await conn.execute(
        "SELECT id, message_id, event::text, sealed FROM inbound_messages "
        "WHERE company_id = %s AND id > %s AND (sealed IS NULL OR "
        "substring(sealed FROM 1 FOR %s) <> %s) ORDER BY id LIMIT %s",
        (company, int(after or 0), len(head), head, limit),
    )
    rows = await cur.fetchall()
    if not rows:
        return 0, 0, None
    keys = await _keys(conn, db, company, rows, 3)
    mids, olds, news = [], [], []
    for _, mid, event, sealed in rows:
        try:
            plain = event if sealed is None else open_event(keys, company, mid, bytes(sealed))
        except ValueError as exc:
            raise unreadable(company, INBOUND, mid, str(exc)) from None
        mids.append(mid)
        olds.append(sealed)
        news.append(seal_event(current, company, mid, plain))
    cur = await conn.execute(
        "UPDATE inbound_messages m SET sealed = v.new, body = '', event = NULL "
        "FROM unnest(%s::text[], %s::bytea[], %s::bytea[]) AS v(mid, old, new) "
        "WHERE m.company_id = %s AND m.message_id = v.mid AND m.sealed IS NOT DISTINCT FROM v.old",
        (mids, olds, news, company),
    )
    rewritten = max(cur.rowcount, 0)
    return rewritten, len(news) - rewritten, str(rows[-1][0])


async def outbound_batch(
    conn: Conn, db: Database, company: str, current: DataKey, after: str | None, limit: int
) -> tuple[int, int, str | None]:
    head = prefix(current)
    cur = await conn.execute(
        "SELECT id::text, text, media, media_filename, sealed FROM outbound_messages "
        "WHERE company_id = %s AND id > %s::uuid AND (sealed IS NULL OR "
        "substring(sealed FROM 1 FOR %s) <> %s) ORDER BY id LIMIT %s",
        (company, after or _NO_UUID, len(head), head, min(limit, OUTBOUND_BATCH)),
    )
    rows = await cur.fetchall()
    if not rows:
        return 0, 0, None
    keys = await _keys(conn, db, company, rows, 4)
    ids, olds, texts, digests, names, news = [], [], [], [], [], []
    for mid, text, media, filename, sealed in rows:
        media = bytes(media) if media is not None else None
        try:
            content = (
                Content(text, media, filename)
                if sealed is None
                else open_content(keys, company, mid, bytes(sealed))
            )
        except (ValueError, KeyError) as exc:
            raise unreadable(company, OUTBOUND, mid, str(exc)) from None
        ids.append(mid)
        olds.append(sealed)
        texts.append(text)
        digests.append(
            hashlib.md5(media, usedforsecurity=False).hexdigest() if media is not None else None
        )
        names.append(filename)
        news.append(seal_content(current, company, mid, content))
    cur = await conn.execute(
        "UPDATE outbound_messages o SET sealed = v.new, text = '', media = NULL, "
        "media_filename = NULL FROM unnest(%s::uuid[], %s::bytea[], %s::text[], %s::text[], "
        "%s::text[], %s::bytea[]) AS v(id, old, text, digest, name, new) "
        "WHERE o.id = v.id AND o.company_id = %s AND o.sealed IS NOT DISTINCT FROM v.old "
        "AND (v.old IS NOT NULL OR (o.text = v.text AND md5(o.media) IS NOT DISTINCT FROM "
        "v.digest AND o.media_filename IS NOT DISTINCT FROM v.name))",
        (ids, olds, texts, digests, names, news, company),
    )
    rewritten = max(cur.rowcount, 0)
    return rewritten, len(news) - rewritten, str(rows[-1][0])


async def _keys(
    conn: Conn, db: Database, company: str, rows: list[tuple[Any, ...]], sealed_at: int
) -> dict[str, DataKey]:
    if any(r[sealed_at] is not None for r in rows):
        return await db.cipher.keys_of(conn, company)
    return {}


MESSAGE_TABLES: tuple[Step, ...] = (inbound_batch, outbound_batch)
