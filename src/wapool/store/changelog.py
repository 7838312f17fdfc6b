"""Reading and trimming a working store's change log.

``read_prefix`` takes everything committed so far in one read transaction, coalesced to the
last state of each key, so what the mirror applies is exactly the store's state after some
whatsmeow transaction: never half of one. A prefix ends at the first cleanup purge (see
``store.purge``): the entries before it are applied first, then the purge, so no coalescing
ever moves a write across a purge.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from wapool.store.capture import PURGE_TABLE, get_meta, json_array_sql
from wapool.store.codec import decode_value
from wapool.store.purge import Purge
from wapool.store.schema import StoreSchema, quote, read_schema

TRIM_BATCH = 5_000
NO_LIMIT = 2**63 - 1


@dataclass(frozen=True)
class Change:
    table: str
    key: str
    #: The row's image, or None when the key no longer exists.
    image: str | None
    #: When the change was committed locally (Unix seconds).
    at: float


@dataclass(frozen=True)
class Prefix:
    store_uuid: str
    fingerprint: str
    #: Highest sequence number included; everything up to it is covered.
    high_seq: int
    #: Raw entries covered (before coalescing).
    entries: int
    changes: list[Change]
    oldest_at: float | None
    #: A cleanup purge to apply after ``changes`` (it is the entry at ``high_seq``).
    purge: Purge | None = None


@dataclass(frozen=True)
class Pending:
    rows: int
    oldest_at: float | None


def pending(conn: sqlite3.Connection) -> Pending:
    rows, oldest = conn.execute("SELECT count(*), min(at) FROM wapool_changelog").fetchone()
    return Pending(int(rows), oldest)


def read_prefix(conn: sqlite3.Connection, after_seq: int = 0) -> Prefix | None:
    """Everything logged after ``after_seq``, coalesced; None when there is nothing."""
    conn.execute("BEGIN")
    try:
        purge_seq, purge_text = conn.execute(
            "SELECT seq, img FROM wapool_changelog WHERE tbl = ? AND seq > ? ORDER BY seq LIMIT 1",
            (PURGE_TABLE, after_seq),
        ).fetchone() or (None, None)
        high, count, oldest = conn.execute(
            "SELECT max(seq), count(*), min(at) FROM wapool_changelog WHERE seq > ? AND seq <= ?",
            (after_seq, purge_seq if purge_seq is not None else NO_LIMIT),
        ).fetchone()
        if high is None:
            return None
        rows = conn.execute(
            "SELECT tbl, pk, op, img, at, max(seq) FROM wapool_changelog "
            "WHERE seq > ? AND seq <= ? AND tbl <> ? GROUP BY tbl, pk",
            (after_seq, high, PURGE_TABLE),
        ).fetchall()
        schema: StoreSchema | None = None
        changes: list[Change] = []
        for table, key, op, image, at, _ in rows:
            if op == "R":
                schema = schema or read_schema(conn)
                image = _current_image(conn, schema, table, key)
            changes.append(Change(table, key, image if op != "D" else None, at))
        return Prefix(
            store_uuid=get_meta(conn, "store_uuid") or "",
            fingerprint=get_meta(conn, "capture_fingerprint") or "",
            high_seq=int(high),
            entries=int(count),
            changes=changes,
            oldest_at=oldest,
            purge=Purge.decode(purge_text) if purge_text is not None else None,
        )
    finally:
        conn.execute("COMMIT")


def _current_image(
    conn: sqlite3.Connection, schema: StoreSchema, table: str, key: str
) -> str | None:
    spec = schema.table(table)
    values = [decode_value(v) for v in json.loads(key)]
    where = " AND ".join(f"{quote(c)} IS ?" for c in spec.key_columns)
    row = conn.execute(
        f"SELECT {json_array_sql(quote(table), spec.columns)} FROM {quote(table)} WHERE {where}",
        values,
    ).fetchone()
    return None if row is None else str(row[0])


def trim(conn: sqlite3.Connection, up_to_seq: int) -> int:
    """Delete entries up to ``up_to_seq`` in short batches; return how many went."""
    removed = 0
    while True:
        cur = conn.execute(
            "DELETE FROM wapool_changelog WHERE seq IN "
            "(SELECT seq FROM wapool_changelog WHERE seq <= ? ORDER BY seq LIMIT ?)",
            (up_to_seq, TRIM_BATCH),
        )
        removed += cur.rowcount
        if cur.rowcount < TRIM_BATCH:
            return removed


def last_seq(conn: sqlite3.Connection) -> int:
    """The highest sequence number ever issued (survives trimming)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'wapool_changelog'").fetchone()
    return int(row[0]) if row else 0
