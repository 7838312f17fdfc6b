"""The cleanup's PostgreSQL side: what has expired, and deletes done in PostgreSQL directly.

Every statement touches at most one batch of rows, so no statement holds its row locks for long
and the mirror's transactions never wait behind the cleanup for more than a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import LiteralString

from wapool.db.pool import Conn, Database

#: Rows per PostgreSQL delete statement.
PG_BATCH = 5_000


@dataclass(frozen=True)
class Page:
    """Keys of expired rows of one company's table, in key order, after a cursor."""

    applied_seq: int
    keys: list[tuple[str, int]]  # (pk, bytes of the image)


@dataclass(frozen=True)
class PlanRow:
    company_id: str
    table: str  # a whatsmeow table, or "(removed company)" / "(logout tombstones)"
    rows: int
    bytes: int


REMOVED = "(removed company)"
TOMBSTONES = "(logout tombstones)"


async def expired_page(
    db: Database, company_id: str, table: str, cutoff: datetime, after: str, limit: int
) -> Page:
    """The next ``limit`` expired keys after ``after``, and the ``applied_seq`` they reflect
    (one statement: one snapshot)."""

    async def work(conn: Conn) -> Page:
        # Walk the primary key in order; with stale statistics (a table just loaded or purged)
        # the planner may otherwise sort a company's whole table for every page.
        await conn.execute("SET LOCAL enable_sort = off")
        cur = await conn.execute(
            "SELECT pk, octet_length(image), "
            "(SELECT applied_seq FROM store_copies WHERE company_id = %(c)s) FROM store_rows "
            "WHERE company_id = %(c)s AND tbl = %(t)s AND pk > %(after)s "
            "AND written_at < %(cutoff)s ORDER BY pk LIMIT %(limit)s",
            {"c": company_id, "t": table, "after": after, "cutoff": cutoff, "limit": limit},
        )
        rows = await cur.fetchall()
        return Page(int(rows[0][2]) if rows else 0, [(str(k), int(n)) for k, n, _ in rows])

    return await db.run(work, timeout=db.query_timeout + 30)


async def rewritten_since(
    db: Database,
    company_id: str,
    table: str,
    after: str,
    through: str,
    seq: int,
) -> list[str]:
    """Keys in (``after``, ``through``] written by a prefix after ``seq``."""

    async def work(conn: Conn) -> list[str]:
        cur = await conn.execute(
            "SELECT pk FROM store_rows WHERE company_id = %s AND tbl = %s "
            "AND pk > %s AND pk <= %s AND seq > %s",
            (company_id, table, after, through, seq),
        )
        return [str(k) for (k,) in await cur.fetchall()]

    return await db.run(work)


async def plan(
    db: Database,
    cutoffs: dict[str, datetime],
    removed_cutoff: datetime,
    company_id: str | None = None,
) -> list[PlanRow]:
    """What a run would delete now, per company and table (reads only)."""
    result: list[PlanRow] = []

    async def work(conn: Conn) -> None:
        await conn.execute("SET LOCAL statement_timeout = 0")
        for table, cutoff in sorted(cutoffs.items()):
            cur = await conn.execute(
                "SELECT r.company_id, count(*), coalesce(sum(octet_length(r.image)), 0) "
                "FROM store_rows r JOIN companies c ON c.id = r.company_id "
                "WHERE r.tbl = %s AND r.written_at < %s AND (c.removed_at IS NULL "
                "OR c.removed_at >= %s) AND (%s::text IS NULL OR r.company_id = %s) "
                "GROUP BY r.company_id",
                (table, cutoff, removed_cutoff, company_id, company_id),
            )
            result.extend(PlanRow(c, table, int(n), int(b)) for c, n, b in await cur.fetchall())
        cur = await conn.execute(
            "SELECT c.id, count(r.pk), coalesce(sum(octet_length(r.image)), 0) "
            "FROM companies c LEFT JOIN store_rows r ON r.company_id = c.id "
            "WHERE c.removed_at < %s AND (%s::text IS NULL OR c.id = %s) GROUP BY c.id",
            (removed_cutoff, company_id, company_id),
        )
        result.extend(PlanRow(c, REMOVED, int(n), int(b)) for c, n, b in await cur.fetchall())
        cur = await conn.execute(
            "SELECT company_id, count(*), coalesce(sum(octet_length(image)), 0) "
            "FROM store_tombstones WHERE tombstoned_at < %s "
            "AND (%s::text IS NULL OR company_id = %s) GROUP BY company_id",
            (removed_cutoff, company_id, company_id),
        )
        result.extend(PlanRow(c, TOMBSTONES, int(n), int(b)) for c, n, b in await cur.fetchall())

    await db.run(work, timeout=3600)
    return sorted(result, key=lambda r: (r.company_id, r.table))


async def delete_expired_batch(
    db: Database, company_id: str, table: str, cutoff: datetime
) -> tuple[int, int]:
    """One batch of a company without a working store here; returns (rows, bytes)."""
    return await _delete_batch(
        db,
        "DELETE FROM store_rows WHERE ctid = ANY(ARRAY(SELECT ctid FROM store_rows "
        "WHERE company_id = %s AND tbl = %s AND written_at < %s LIMIT %s)) "
        "AND written_at < %s RETURNING octet_length(image)",
        (company_id, table, cutoff, PG_BATCH, cutoff),
    )


async def delete_removed_batch(db: Database, company_id: str, cutoff: datetime) -> tuple[int, int]:
    """One batch of a company removed before ``cutoff`` (nothing if it came back since)."""
    return await _delete_batch(
        db,
        "DELETE FROM store_rows WHERE ctid = ANY(ARRAY(SELECT ctid FROM store_rows "
        "WHERE company_id = %s LIMIT %s)) AND EXISTS (SELECT 1 FROM companies "
        "WHERE id = %s AND removed_at < %s) RETURNING octet_length(image)",
        (company_id, PG_BATCH, company_id, cutoff),
    )


async def delete_tombstones_batch(db: Database, cutoff: datetime) -> tuple[int, int]:
    return await _delete_batch(
        db,
        "DELETE FROM store_tombstones WHERE ctid = ANY(ARRAY(SELECT ctid FROM store_tombstones "
        "WHERE tombstoned_at < %s LIMIT %s)) RETURNING octet_length(image)",
        (cutoff, PG_BATCH),
    )


async def forget_removed(db: Database, company_id: str, cutoff: datetime) -> bool:
    """Delete what is left of a removed company (its copy, imports, leases, the company)."""
    deleted = await db.execute(
        "DELETE FROM companies WHERE id = %s AND removed_at < %s "
        "AND NOT EXISTS (SELECT 1 FROM store_rows WHERE company_id = %s)",
        (company_id, cutoff, company_id),
    )
    return deleted > 0


async def removed_companies(db: Database, cutoff: datetime) -> list[str]:
    rows = await db.fetch("SELECT id FROM companies WHERE removed_at < %s ORDER BY id", (cutoff,))
    return [str(r[0]) for r in rows]


async def retained_companies(db: Database, removed_cutoff: datetime) -> list[str]:
    """Companies with a PostgreSQL copy whose data is still kept (not removed past retention)."""
    rows = await db.fetch(
        "SELECT c.id FROM companies c JOIN store_copies s ON s.company_id = c.id "
        "WHERE c.removed_at IS NULL OR c.removed_at >= %s ORDER BY c.id",
        (removed_cutoff,),
    )
    return [str(r[0]) for r in rows]


async def _delete_batch(
    db: Database, sql: LiteralString, params: tuple[object, ...]
) -> tuple[int, int]:
    async def work(conn: Conn) -> tuple[int, int]:
        cur = await conn.execute(sql, params)
        sizes = [int(r[0]) for r in await cur.fetchall()]
        return len(sizes), sum(sizes)

    return await db.run(work)
