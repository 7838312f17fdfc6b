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
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from wapool.store.codec import decode_value
from wapool.store.purge import PURGE_TABLE, Purge
from wapool.store.schema import StoreSchema, quote, read_schema
from wapool.store.working_store import json_array_sql, transaction

TRIM_BATCH = 5_000
#: Purges per prefix: each one costs the mirror a few statements in its transaction.
MAX_PURGES = 32


class Change(NamedTuple):  # a tuple: a backlog's read builds one per key (100,000s)
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
    ``own_transaction=False``: the caller holds the read transaction.

    One scan of the log, cut and coalesced here: a busy host's mirror reads hundreds of stores
    a tick, a few entries each, where each statement counted (a query for the purges, one for
    the bounds and a GROUP BY per step, which sorted a large backlog in a temporary B-tree)."""
    with transaction(conn) if own_transaction else contextlib.nullcontext():
        scan = _scan(conn, after_seq)
        if scan is None:
            return None
        schema: StoreSchema | None = None
        changes: list[Change] = []
        for step, latest in enumerate(scan.steps):
            # In key order: PostgreSQL then updates its index in order, much cheaper for a
            # large backlog than in the log's order.
            for _, table, key, op, image, at in (latest[k] for k in sorted(latest)):
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
            high_seq=scan.high_seq,
            entries=scan.entries,
            changes=changes,
            oldest_at=scan.oldest_at,
            purges=tuple(Purge.decode(image) for image in scan.purges),
        )


@dataclass
class _Scan:
    #: Per step, the last entry of each (table, key): what a step coalesces to.
    steps: list[dict[tuple[str, str], tuple[Any, ...]]]
    #: The purges' images; ``purges[i]`` follows ``steps[i]``.
    purges: list[str]
    high_seq: int
    entries: int
    oldest_at: float


def _scan(conn: sqlite3.Connection, after_seq: int) -> _Scan | None:
    """The entries after ``after_seq`` in order, up to the ``MAX_PURGES``-th purge, coalesced
    as they are read: memory follows the keys, not the entries (a backlog after a long outage
    is millions of entries over a few thousand keys)."""
    cursor = conn.execute(
        "SELECT seq, tbl, pk, op, img, at FROM wapool_changelog WHERE seq > ? ORDER BY seq",
        (after_seq,),
    )
    latest: dict[tuple[str, str], tuple[Any, ...]] = {}
    scan = _Scan([latest], [], 0, 0, float("inf"))
    try:
        for row in cursor:  # row by row: a fetched block of large images is memory too
            scan.high_seq, at = row[0], row[5]
            scan.entries += 1
            if at < scan.oldest_at:
                scan.oldest_at = at
            if row[1] != PURGE_TABLE:
                latest[row[1], row[2]] = row
                continue
            scan.purges.append(row[4])
            if len(scan.purges) == MAX_PURGES:
                break  # the rest waits for the next prefix
            latest = {}
            scan.steps.append(latest)
    finally:
        cursor.close()
    return scan if scan.entries else None


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
    """Delete entries up to ``up_to_seq`` in short transactions of at most ``TRIM_BATCH``
    entries; return how many went. With ``entries`` (how many there are, from the prefix
    read) no more than a batch: one range delete, without looking for the first entry (the
    mirror's usual tick, once per store)."""
    if entries is not None and entries <= TRIM_BATCH:
        return conn.execute("DELETE FROM wapool_changelog WHERE seq <= ?", (up_to_seq,)).rowcount
    removed = 0
    while (low := first_seq_after(conn, 0)) is not None and low <= up_to_seq:
        # Sequence numbers are unique: this range holds at most a batch.
        upper = min(up_to_seq, low + TRIM_BATCH - 1)
        removed += conn.execute("DELETE FROM wapool_changelog WHERE seq <= ?", (upper,)).rowcount
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
