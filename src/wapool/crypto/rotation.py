"""Master key rotation (re-wrap data keys, no row rewritten) and online re-encryption of rows
(plaintext, or sealed with an older data key) in bounded batches.

Re-encryption never holds a lock for long: each batch is one short transaction that rewrites a
row only if it is still the image it read (same ``seq`` and image), so a row the mirror rewrote
meanwhile is left to the mirror, which seals it itself. It resumes where it stops: what is
sealed with the current data key is never selected again. Message bodies
(``inbound_messages``, ``outbound_messages``: ``crypto.messages``) are re-sealed the same way,
after the store rows (``message_rotation``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from wapool.crypto.envelope import DataKey, is_sealed, open_image, seal, unwrap, wrap
from wapool.crypto.keyring import Keyring
from wapool.crypto.message_rotation import MESSAGE_TABLES, Step
from wapool.db.pool import Conn, Database

TABLES = ("store_rows", "store_tombstones")
#: Data keys re-wrapped per transaction.
REWRAP_BATCH = 500
#: Where a batch starts: after this key (store rows) or this id (messages).
P = TypeVar("P")
#: A store row's place: (tombstoned_at as text or '', table, row key).
Key = tuple[str, str, str]


async def rewrap(db: Database, keyring: Keyring, *, batch: int = REWRAP_BATCH) -> int:
    """Wrap every data key with the current master key, ``batch`` keys per transaction (no
    long lock, however many companies); returns how many were re-wrapped."""
    current = keyring.current

    async def work(conn: Conn) -> int:
        cur = await conn.execute(
            "SELECT company_id, key_id, master_key_id, wrapped FROM store_data_keys "
            "WHERE master_key_id <> %s ORDER BY company_id, key_id LIMIT %s FOR UPDATE",
            (current.key_id, batch),
        )
        done = 0
        for company_id, key_id, master_key_id, wrapped in await cur.fetchall():
            old = keyring.get(master_key_id)
            if old is None:
                raise_missing(keyring, master_key_id, company_id)
            assert old is not None
            secret = unwrap(old.secret, company_id, key_id, bytes(wrapped))
            await conn.execute(
                "UPDATE store_data_keys SET master_key_id = %s, wrapped = %s, "
                "rewrapped_at = now() WHERE company_id = %s AND key_id = %s",
                (current.key_id, wrap(current.secret, company_id, key_id, secret), company_id,
                 key_id),
            )  # fmt: skip
            done += 1
        return done

    total = 0
    while done := await db.run(work):
        total += done
        if done < batch:
            break
    return total


def raise_missing(keyring: Keyring, master_key_id: str, company_id: str) -> None:
    from wapool.errors import ConfigError

    raise ConfigError(
        [
            f"{keyring.source}: lacks master key {master_key_id}, which wraps company "
            f"{company_id!r}'s data key"
        ]
    )


@dataclass
class Progress:
    company_id: str
    rewritten: int = 0
    skipped: int = 0  # changed meanwhile: the mirror wrote them (sealed) itself


async def reencrypt(
    db: Database, company_id: str, *, batch: int = 1000, pause: float = 0.05
) -> Progress:
    """Seal every row of the company not sealed with its current data key, ``batch`` rows per
    transaction, ``pause`` seconds between transactions (the mirror's writes go first)."""
    keys, _ = await db.cipher.prepare(db, [company_id])
    current = keys.get(company_id)
    progress = Progress(company_id)
    if current is None:
        return progress  # no such company, or no master key
    for table in TABLES:

        async def rows(conn: Conn, after: Key, table: str = table) -> tuple[int, int, Key | None]:
            return await _batch(conn, db, table, company_id, current, after, batch)

        await _pages(db, progress, pause, ("", "", ""), rows)
    for step in MESSAGE_TABLES:

        async def messages(
            conn: Conn, after: str | None, step: Step = step
        ) -> tuple[int, int, str | None]:
            return await step(conn, db, company_id, current, after, batch)

        await _pages(db, progress, pause, None, messages)
    return progress


async def _pages(
    db: Database,
    progress: Progress,
    pause: float,
    start: P,
    batch: Callable[[Conn, P], Awaitable[tuple[int, int, P | None]]],
) -> None:
    """Run ``batch`` from ``start`` in short transactions, ``pause`` seconds apart, each from
    where the previous one said to continue, until one says there is nothing more (None); its
    counts are added to ``progress``."""
    position = start
    while True:

        async def page(conn: Conn, at: P = position) -> tuple[int, int, P | None]:
            return await batch(conn, at)

        rewritten, skipped, following = await db.run(page)
        progress.rewritten += rewritten
        progress.skipped += skipped
        if following is None:
            return
        position = following
        await asyncio.sleep(pause)


async def _batch(
    conn: Conn,
    db: Database,
    table: str,
    company_id: str,
    current: DataKey,
    after: Key,
    limit: int,
) -> tuple[int, int, Key | None]:
    """One batch: (rewritten, skipped, where to continue or None when done)."""
    if table == "store_tombstones":
        cur = await conn.execute(
            "SELECT tombstoned_at::text, tbl, pk, seq, image FROM store_tombstones "
            "WHERE company_id = %s AND (tombstoned_at::text, tbl, pk) > (%s, %s, %s) "
            "ORDER BY 1, 2, 3 LIMIT %s",
            (company_id, *after, limit),
        )
    else:
        cur = await conn.execute(
            "SELECT '', tbl, pk, seq, image FROM store_rows WHERE company_id = %s "
            "AND (tbl, pk) > (%s, %s) ORDER BY tbl, pk LIMIT %s",
            (company_id, after[1], after[2], limit),
        )
    rows = await cur.fetchall()
    if not rows:
        return 0, 0, None
    keys = await db.cipher.keys_of(conn, company_id)
    stamps: list[str] = []
    tbls: list[str] = []
    pks: list[str] = []
    seqs: list[int] = []
    olds: list[str] = []
    news: list[str] = []
    prefix = f"e1:{current.key_id}:"
    for stamp, tbl, pk, seq, image in rows:
        if image.startswith(prefix):
            continue
        plain = open_image(keys, company_id, tbl, pk, seq, image) if is_sealed(image) else image
        stamps.append(stamp)
        tbls.append(tbl)
        pks.append(pk)
        seqs.append(seq)
        olds.append(image)
        news.append(seal(current, company_id, tbl, pk, seq, plain))
    last = (str(rows[-1][0]), str(rows[-1][1]), str(rows[-1][2]))
    if not news:
        return 0, 0, last
    bounds: tuple[str, ...] = ()
    if table == "store_tombstones":
        match = "AND r.tombstoned_at::text = v.stamp"
    else:  # the batch's key range: an index range scan, not all the company's rows
        match = "AND (r.tbl, r.pk) BETWEEN (%s, %s) AND (%s, %s)"
        bounds = (rows[0][1], rows[0][2], rows[-1][1], rows[-1][2])
    cur = await conn.execute(
        f"UPDATE {table} r SET image = v.new FROM unnest("
        "%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[]) "
        "AS v(stamp, tbl, pk, seq, old, new) WHERE r.company_id = %s AND r.tbl = v.tbl "
        f"AND r.pk = v.pk AND r.seq = v.seq AND r.image = v.old {match}",
        (stamps, tbls, pks, seqs, olds, news, company_id, *bounds),
    )
    rewritten = max(cur.rowcount, 0)
    return rewritten, len(news) - rewritten, last


async def companies_with_rows(db: Database) -> list[str]:
    async def work(conn: Conn) -> list[str]:
        cur = await conn.execute(
            "SELECT company_id FROM store_copies UNION "
            "SELECT DISTINCT company_id FROM store_tombstones UNION "
            "SELECT id FROM companies c WHERE EXISTS (SELECT 1 FROM inbound_messages m "
            "WHERE m.company_id = c.id) OR EXISTS (SELECT 1 FROM outbound_messages o "
            "WHERE o.company_id = c.id) ORDER BY 1"
        )
        return [str(r[0]) for r in await cur.fetchall()]

    return await db.run(work)
