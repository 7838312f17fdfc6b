"""Reading and trimming a working store's change log.

``read_prefix`` takes everything committed so far in one read transaction, coalesced to the
last state of each key, so what the mirror applies is exactly the store's state after some
whatsmeow transaction: never half of one. Cleanup purges (see ``store.purge``) cut a prefix
into steps: the entries before the first purge (coalesced), that purge, the entries up to the
next one, and so on. Each step is coalesced on its own and applied in order, so no write ever
moves across a purge.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from wapool.store.codec import decode_value
from wapool.store.purge import PURGE_TABLE, Purge
from wapool.store.schema import StoreSchema, quote, read_schema
from wapool.store.working_store import json_array_sql, transaction

TRIM_BATCH = 5_000
#: Purges per prefix: each one costs the mirror a few statements in its transaction.
MAX_PURGES = 32


@dataclass(frozen=True)
class Change:
    table: str
    key: str
    #: The row's image, or None when the key no longer exists.
    image: str | None
    #: When the change was committed locally (Unix seconds).
    at: float
    #: Applied after ``Prefix.purges[step - 1]`` and before ``Prefix.purges[step]``.
    step: int = 0


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
    #: Cleanup purges; ``purges[i]`` applies after the changes of step ``i``.
    purges: tuple[Purge, ...] = ()


@dataclass(frozen=True)
class Pending:
    rows: int
    oldest_at: float | None


def pending(conn: sqlite3.Connection, after_seq: int = 0) -> Pending:
    """Entries after ``after_seq`` (the mirror's: those not yet in PostgreSQL)."""
    rows, oldest = conn.execute(
        "SELECT count(*), min(at) FROM wapool_changelog WHERE seq > ?", (after_seq,)
    ).fetchone()
    return Pending(int(rows), oldest)


def read_prefix(
    conn: sqlite3.Connection, after_seq: int = 0, *, own_transaction: bool = True
) -> Prefix | None:
    """Everything logged after ``after_seq``, coalesced; None when there is nothing.
    ``own_transaction=False``: the caller holds the read transaction."""
    with transaction(conn) if own_transaction else contextlib.nullcontext():
        purges = conn.execute(
            "SELECT seq, img FROM wapool_changelog WHERE tbl = ? AND seq > ? ORDER BY seq LIMIT ?",
            (PURGE_TABLE, after_seq, MAX_PURGES),
        ).fetchall()
        limit = purges[-1][0] if len(purges) == MAX_PURGES else None
        high, count, oldest = conn.execute(
            "SELECT max(seq), count(*), min(at) FROM wapool_changelog "
            "WHERE seq > ? AND (? IS NULL OR seq <= ?)",
            (after_seq, limit, limit),
        ).fetchone()
        if high is None:
            return None
        bounds = [after_seq, *(int(seq) for seq, _ in purges)]
        if bounds[-1] < high:
            bounds.append(int(high))
        schema: StoreSchema | None = None
        changes: list[Change] = []
        for step, (low, upper) in enumerate(itertools.pairwise(bounds)):
            rows = conn.execute(
                "SELECT tbl, pk, op, img, at, max(seq) FROM wapool_changelog "
                "WHERE seq > ? AND seq <= ? AND tbl <> ? GROUP BY tbl, pk",
                (low, upper, PURGE_TABLE),
            ).fetchall()
            for table, key, op, image, at, _ in rows:
                if op == "R":
                    schema = schema or read_schema(conn)
                    image = current_image(conn, schema, table, key)
                changes.append(Change(table, key, image if op != "D" else None, at, step))
        meta = dict(
            conn.execute(
                "SELECT key, value FROM wapool_meta "
                "WHERE key IN ('store_uuid', 'capture_fingerprint')"
            ).fetchall()
        )
        return Prefix(
            store_uuid=meta.get("store_uuid") or "",
            fingerprint=meta.get("capture_fingerprint") or "",
            high_seq=int(high),
            entries=int(count),
            changes=changes,
            oldest_at=oldest,
            purges=tuple(Purge.decode(text) for _, text in purges),
        )


def current_image(
    conn: sqlite3.Connection, schema: StoreSchema, table: str, key: str
) -> str | None:
    """The mirror's image of the row ``key`` of ``table`` as it is now (None: no such row)."""
    spec = schema.table(table)
    values = [decode_value(v) for v in json.loads(key)]
    where = " AND ".join(f"{quote(c)} IS ?" for c in spec.key_columns)
    row = conn.execute(
        f"SELECT {json_array_sql(quote(table), spec.columns)} FROM {quote(table)} WHERE {where}",
        values,
    ).fetchone()
    return None if row is None else str(row[0])


def trim(conn: sqlite3.Connection, up_to_seq: int, entries: int | None = None) -> int:
    """Delete entries up to ``up_to_seq`` in short batches; return how many went. With
    ``entries`` (how many there are, from the prefix read) no more than a batch: one plain
    range delete, without the batching subquery (the mirror's usual tick, once per store)."""
    if entries is not None and entries <= TRIM_BATCH:
        return conn.execute("DELETE FROM wapool_changelog WHERE seq <= ?", (up_to_seq,)).rowcount
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


def continue_after(conn: sqlite3.Connection, seq: int) -> None:
    """Make the next entry's sequence number ``seq + 1`` (a restored store carries on from its
    copy's ``applied_seq``)."""
    with transaction(conn):
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'wapool_changelog'")
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('wapool_changelog', ?)", (seq,)
        )


def first_seq_after(conn: sqlite3.Connection, seq: int) -> int | None:
    """The lowest sequence number still in the log above ``seq`` (None: nothing is)."""
    row = conn.execute("SELECT min(seq) FROM wapool_changelog WHERE seq > ?", (seq,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def upserted_keys(conn: sqlite3.Connection, after_seq: int) -> Iterator[tuple[str, str]]:
    """(table, key) of every entry above ``after_seq`` that may have written the row (upserts
    and rechecks; purge entries are deletes too)."""
    return conn.execute(
        "SELECT tbl, pk FROM wapool_changelog WHERE seq > ? AND op <> 'D'", (after_seq,)
    )


def logs_purges(conn: sqlite3.Connection) -> bool:
    """Were the store's capture objects installed by a wapool that logs cleanup purges?"""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'wapool_purging'").fetchone()
    return row is not None
