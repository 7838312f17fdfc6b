"""The PostgreSQL side of the auth store: per-company metadata and rows.

``apply`` writes the coalesced prefixes of several companies in one transaction: COPY into a
temporary table, then set-based deletes and upserts, each company's cleanup purges (range
deletes between the steps they cut the prefix into, see ``store.purge``) and ``applied_seq``.
Every row written carries the ``seq`` of the prefix that wrote it, which is what lets a purge
spare rows rewritten after it was planned.

A prefix is refused when the copy belongs to another store (``store_uuid``) or, with a
``Fence``, when this holder's lease epoch is not the current one. It is *not* refused for
being old: after a crash between the PostgreSQL commit and the local trim, the next prefix
starts with the same entries again and is applied in full. That replay is harmless because
every write is idempotent (each key's latest image upserted, deletes of keys already gone,
purges bounded by their ``read_seq``) and ``applied_seq`` only moves forward (``greatest``).

With a master key configured, each image is sealed (``crypto.envelope.seal``) on its way into
COPY, bound to its company, table, key and ``seq``; ``read_rows`` opens them again.

One module over 250 lines: every statement that writes the PostgreSQL copy is here, so the
fencing and forward-only rules are checked in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg

from wapool.crypto.envelope import DataKey
from wapool.db.pool import Conn, Database
from wapool.leases import Fence
from wapool.store import copy_rows
from wapool.store.changelog import Prefix
from wapool.store.purge import Purge
from wapool.store.schema import StoreSchema


@dataclass(frozen=True)
class CopyMeta:
    company_id: str
    store_uuid: str
    schema_version: int
    schema_fingerprint: str
    schema_ddl: str
    applied_seq: int
    epoch: int


@dataclass(frozen=True)
class _Held:
    """What a tick needs of a copy's metadata, locked until it commits."""

    store_uuid: str
    schema_fingerprint: str
    epoch: int


@dataclass(frozen=True)
class Batch:
    company_id: str
    prefix: Prefix
    #: The store's schema, sent along when the copy is new or the fingerprint changed.
    schema: StoreSchema


@dataclass(frozen=True)
class Outcome:
    applied: dict[str, int]  # company -> rows written and purged
    rejected: dict[str, str]  # company -> why


DDL_SEPARATOR = "\n;\n"

META_QUERY = (
    "SELECT company_id, store_uuid::text, schema_version, schema_fingerprint, schema_ddl, "
    "applied_seq, epoch FROM store_copies"
)


async def fetch_meta(db: Database, company_id: str) -> CopyMeta | None:
    async def work(conn: Conn) -> CopyMeta | None:
        cur = await conn.execute(META_QUERY + " WHERE company_id = %s", (company_id,))
        row = await cur.fetchone()
        return None if row is None else CopyMeta(*row)

    return await db.run(work)


async def fetch_rows(
    db: Database, company_id: str, timeout: float | None = None
) -> list[tuple[str, str, str]]:
    """(table, key, image) of every row of the company's copy."""

    async def work(conn: Conn) -> list[tuple[str, str, str]]:
        return await read_rows(conn, db, company_id)

    return await db.run(work, timeout=timeout)


async def read_rows(conn: Conn, db: Database, company_id: str) -> list[tuple[str, str, str]]:
    """(table, key, plaintext image) of every row; ``RowUnreadable`` names the company and the
    tables whose rows do not decrypt (see ``crypto.envelope``)."""
    cur = await conn.execute(
        "SELECT tbl, pk, seq, image FROM store_rows WHERE company_id = %s", (company_id,)
    )
    rows: list[tuple[str, str, int, str]] = await cur.fetchall()  # text, text, bigint, text
    return await db.cipher.open_rows(conn, company_id, rows)


async def apply(
    db: Database, batches: list[Batch], timeout: float | None = None, fence: Fence | None = None
) -> Outcome:
    current, unusable = await db.cipher.prepare(db, [b.company_id for b in batches])
    keys = dict(current) if current else current  # the cipher's live cache, read in a thread
    kept = [b for b in batches if b.company_id not in unusable]

    async def work(conn: Conn) -> Outcome:
        outcome = await _apply(conn, kept, fence, keys) if kept else Outcome({}, {})
        return Outcome(outcome.applied, {**outcome.rejected, **unusable})

    outcome = await db.run(work, timeout=timeout)
    for company_id, reason in outcome.rejected.items():
        if reason == STALE_KEY:
            db.cipher.forget(company_id)
    return outcome


async def _apply(
    conn: Conn,
    batches: list[Batch],
    fence: Fence | None = None,
    keys: dict[str, DataKey] | None = None,
) -> Outcome:
    fenced = await fence.refused(conn, [b.company_id for b in batches]) if fence else {}
    batches = [b for b in batches if b.company_id not in fenced]
    companies = [b.company_id for b in batches]
    # Not the DDL (``META_QUERY``): some 10 KB per company, megabytes a tick on a busy host.
    cur = await conn.execute(
        "SELECT company_id, store_uuid::text, schema_fingerprint, epoch FROM store_copies "
        "WHERE company_id = ANY(%s) ORDER BY company_id FOR UPDATE",
        (companies,),
    )
    metas = {row[0]: _Held(*row[1:]) for row in await cur.fetchall()}
    accepted: list[Batch] = []
    rejected: dict[str, str] = dict(fenced)
    for batch in batches:
        meta = metas.get(batch.company_id)
        if meta is not None and meta.store_uuid != batch.prefix.store_uuid:
            rejected[batch.company_id] = (
                f"the PostgreSQL copy belongs to store {meta.store_uuid}, "
                f"not to this working store ({batch.prefix.store_uuid})"
            )
            continue
        accepted.append(batch)
    if keys:
        accepted = await _keys_still_there(conn, accepted, keys, rejected)
    if not accepted:
        return Outcome({}, rejected)

    # One statement per company, sent together: one round trip, not one per company (with
    # PostgreSQL 20 ms away, 100 companies' metadata took 4 s a tick).
    async with _pipeline(conn):
        moved: list[tuple[str, int, int]] = []  # (company, seq, epoch): the usual case
        for batch in accepted:
            meta = metas.get(batch.company_id)
            kept_epoch = meta.epoch if meta else 0
            epoch = fence.epochs.get(batch.company_id, kept_epoch) if fence else kept_epoch
            if meta is not None and meta.schema_fingerprint == batch.schema.fingerprint:
                moved.append((batch.company_id, batch.prefix.high_seq, epoch))
            else:
                await _upsert_meta(conn, batch, meta, epoch)
            if device_deleted(batch):
                # Keep what PostgreSQL held before the logout's cascade reaches it.
                await conn.execute(
                    "INSERT INTO store_tombstones "
                    "(company_id, tombstoned_at, tbl, pk, image, written_at, seq) "
                    "SELECT company_id, now(), tbl, pk, image, written_at, seq FROM store_rows "
                    "WHERE company_id = %s ON CONFLICT DO NOTHING",
                    (batch.company_id,),
                )
        if moved:
            await _move_seqs(conn, moved)
    applied = {b.company_id: len(b.prefix.changes) for b in accepted}
    purged = 0  # the purges of steps before this one are applied
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS incoming "
        "(company_id text, tbl text, pk text, image text, at double precision, seq bigint, "
        "step int) ON COMMIT DELETE ROWS"
    )
    first = True
    async for chunk in _encoded(copy_rows.chunks(accepted), keys):
        for step in range(purged, chunk.step):  # one step unless the cleanup purged
            await _purges(conn, accepted, step, applied)
        purged = chunk.step
        if not first:
            await conn.execute("TRUNCATE incoming")
        first = False
        async with conn.cursor().copy(f"COPY incoming ({copy_rows.COLUMNS}) FROM STDIN") as copy:
            await copy.write(chunk.data)
        await _write_step(conn, chunk.step)
    for step in range(purged, max(len(b.prefix.purges) for b in accepted)):
        await _purges(conn, accepted, step, applied)
    return Outcome(applied, rejected)


@dataclass(frozen=True)
class _Encoded:
    step: int
    data: bytes


async def _encoded(
    chunks: list[copy_rows.Chunk], keys: dict[str, DataKey] | None
) -> AsyncIterator[_Encoded]:
    """Each chunk's COPY data, built in a thread: the next one while this one is applied."""
    if not chunks:
        return
    ahead = asyncio.ensure_future(asyncio.to_thread(copy_rows.encode, chunks[0], keys))
    try:
        for i, chunk in enumerate(chunks):
            data = await ahead
            if i + 1 < len(chunks):
                ahead = asyncio.ensure_future(
                    asyncio.to_thread(copy_rows.encode, chunks[i + 1], keys)
                )
            yield _Encoded(chunk.step, data)
    finally:
        ahead.cancel()


async def _purges(conn: Conn, batches: list[Batch], step: int, applied: dict[str, int]) -> None:
    """The cleanup purges that follow ``step``'s changes (see ``changelog.read_prefix``)."""
    for batch in batches:
        if step < len(batch.prefix.purges):
            purge = batch.prefix.purges[step]
            applied[batch.company_id] += await _purge(conn, batch.company_id, purge)


def _pipeline(conn: Conn) -> contextlib.AbstractAsyncContextManager[object]:
    return conn.pipeline() if psycopg.Pipeline.is_supported() else contextlib.nullcontext()


STALE_KEY = "its data key is gone (company removed and added again?): retried with a new one"


async def _keys_still_there(
    conn: Conn, batches: list[Batch], keys: dict[str, DataKey], rejected: dict[str, str]
) -> list[Batch]:
    """The batches whose cached data key still exists (locked against deletion until commit);
    the others are rejected with ``STALE_KEY``, so no row is sealed with a lost key."""
    companies = [b.company_id for b in batches]
    cur = await conn.execute(
        "SELECT company_id FROM store_data_keys WHERE company_id = ANY(%s) AND key_id = ANY(%s) "
        "FOR KEY SHARE",
        (companies, [keys[c].key_id for c in companies if c in keys]),
    )
    present = {str(r[0]) for r in await cur.fetchall()}
    for company_id in companies:
        if company_id not in present:
            rejected[company_id] = STALE_KEY
    return [b for b in batches if b.company_id in present]


async def _write_step(conn: Conn, step: int) -> None:
    await conn.execute(
        "DELETE FROM store_rows r USING incoming i WHERE i.image IS NULL AND i.step = %s "
        "AND r.company_id = i.company_id AND r.tbl = i.tbl AND r.pk = i.pk",
        (step,),
    )
    await conn.execute(
        "INSERT INTO store_rows (company_id, tbl, pk, image, written_at, seq) "
        "SELECT company_id, tbl, pk, image, to_timestamp(at), seq FROM incoming "
        "WHERE image IS NOT NULL AND step = %s "
        "ON CONFLICT (company_id, tbl, pk) DO UPDATE "
        "SET image = EXCLUDED.image, written_at = EXCLUDED.written_at, seq = EXCLUDED.seq",
        (step,),
    )


async def _purge(conn: Conn, company_id: str, purge: Purge) -> int:
    """Apply a cleanup purge after the changes logged before it; returns the rows deleted."""
    cur = await conn.execute(
        "DELETE FROM store_rows WHERE company_id = %s AND tbl = %s AND pk > %s AND pk <= %s "
        "AND written_at < %s AND seq <= %s",
        (company_id, purge.table, purge.after, purge.through, purge.cutoff, purge.read_seq),
    )
    return max(cur.rowcount, 0)


async def _move_seqs(conn: Conn, moved: list[tuple[str, int, int]]) -> None:
    """``applied_seq`` forward (never back) and the epoch, for many copies in one statement:
    one per company made the statement count, not the rows, the cost of a busy tick."""
    companies, seqs, epochs = zip(*moved, strict=True)
    await conn.execute(
        "UPDATE store_copies c SET applied_seq = greatest(c.applied_seq, u.seq), "
        "epoch = u.epoch, updated_at = now() "
        "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS u (company_id, seq, epoch) "
        "WHERE c.company_id = u.company_id",
        (list(companies), list(seqs), list(epochs)),
    )


async def _upsert_meta(conn: Conn, batch: Batch, meta: _Held | None, epoch: int) -> None:
    """A new copy, or one whose schema changed (otherwise ``_move_seqs``)."""
    schema, prefix = batch.schema, batch.prefix
    params: dict[str, Any] = {
        "company": batch.company_id,
        "uuid": prefix.store_uuid,
        "version": schema.version,
        "fingerprint": schema.fingerprint,
        "ddl": DDL_SEPARATOR.join(schema.ddl),
        "seq": prefix.high_seq,
        "epoch": epoch,
    }
    if meta is None:
        await conn.execute(
            "INSERT INTO store_copies (company_id, store_uuid, schema_version, "
            "schema_fingerprint, schema_ddl, applied_seq, epoch) VALUES "
            "(%(company)s, %(uuid)s, %(version)s, %(fingerprint)s, %(ddl)s, %(seq)s, %(epoch)s)",
            params,
        )
        return
    await conn.execute(
        "UPDATE store_copies SET applied_seq = greatest(applied_seq, %(seq)s), "
        "schema_version = %(version)s, schema_fingerprint = %(fingerprint)s, "
        "schema_ddl = %(ddl)s, epoch = %(epoch)s, updated_at = now() "
        "WHERE company_id = %(company)s",
        params,
    )


def device_deleted(batch: Batch) -> bool:
    """Does this prefix delete a device (a logout, even if a new pairing follows)?"""
    return any(c.table == "whatsmeow_device" and c.image is None for c in batch.prefix.changes)


def digest(rows: list[tuple[str, str, str]]) -> str:
    """Order-independent digest of a store's rows (table, key, image)."""
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update("\x1f".join(row).encode())
        h.update(b"\x1e")
    return h.hexdigest()
