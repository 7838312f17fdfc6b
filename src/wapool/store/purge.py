"""A purge: one change-log entry standing for a whole batch of cleanup deletes.

The cleanup deletes expired rows from a working store thousands at a time. Logged row by row,
each batch would cost a trigger write per row here and a keyed delete per row in PostgreSQL;
logged as one purge it costs one entry here and one range delete in PostgreSQL.

A purge means: in ``table``, delete the rows whose PostgreSQL key lies in (``after``,
``through``] (in PostgreSQL's own order, where the keys came from), last written locally before
``cutoff``, and last written in PostgreSQL by a prefix at or before ``read_seq`` (the copy's
``applied_seq`` when the keys were read). Those are exactly the rows the cleanup removed from the
working store: it skipped every key rewritten after ``read_seq``, and the mirror applies each of
those rewrites, which raise the row's ``seq``, before it applies the purge.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from wapool.store.schema import Table, quote

#: The change log's table name for purge entries (no whatsmeow table is called that; the
#: partial index ``wapool_changelog_purges`` in ``capture.CAPTURE_DDL`` spells it out too).
PURGE_TABLE = "wapool_purge"


@dataclass(frozen=True)
class Purge:
    table: str
    after: str
    through: str
    cutoff: datetime
    read_seq: int

    def encode(self) -> str:
        return json.dumps(
            {
                "table": self.table,
                "after": self.after,
                "through": self.through,
                "cutoff": self.cutoff.isoformat(),
                "read_seq": self.read_seq,
            }
        )

    @classmethod
    def decode(cls, text: str) -> Purge:
        data = json.loads(text)
        return cls(
            table=str(data["table"]),
            after=str(data["after"]),
            through=str(data["through"]),
            cutoff=datetime.fromisoformat(data["cutoff"]),
            read_seq=int(data["read_seq"]),
        )


def _decoded(expr: str) -> str:
    """SQL turning a tagged value (see ``codec``) back into the SQLite value."""
    body = f"substr({expr}, 2)"
    return (
        f"CASE substr({expr}, 1, 1) WHEN 't' THEN {body} "
        f"WHEN 'i' THEN CAST({body} AS INTEGER) WHEN 'r' THEN CAST({body} AS REAL) "
        f"WHEN 'x' THEN wapool_unhex({body}) END"
    )


def delete_sql(table: Table) -> str:
    """DELETE of the keys given as one JSON array of tagged keys (the ``pk`` texts)."""
    name = quote(table.name)
    columns = enumerate(table.key_columns)
    match = " AND ".join(
        f"t.{quote(c)} IS " + _decoded(f"json_extract(j.value, '$[{n}]')") for n, c in columns
    )
    return (
        f"DELETE FROM {name} WHERE rowid IN "
        f"(SELECT t.rowid FROM json_each(?) AS j JOIN {name} AS t ON {match})"
    )


def prepare(conn: sqlite3.Connection) -> None:
    """Give the connection what ``delete_sql`` needs (SQLite 3.40 has no ``unhex``)."""
    conn.create_function("wapool_unhex", 1, bytes.fromhex, deterministic=True)


def purge(conn: sqlite3.Connection, table: Table, keys: list[str], entry: Purge) -> int:
    """In the caller's write transaction: delete ``keys`` without per-row log entries, log
    ``entry`` instead, and return how many rows went."""
    conn.execute("INSERT INTO wapool_purging (tbl) VALUES (?)", (table.name,))
    try:
        cur = conn.execute(delete_sql(table), ("[" + ",".join(keys) + "]",))
    finally:
        conn.execute("DELETE FROM wapool_purging WHERE tbl = ?", (table.name,))
    conn.execute(
        "INSERT INTO wapool_changelog (tbl, op, pk, img) VALUES (?, 'D', ?, ?)",
        (PURGE_TABLE, entry.table, entry.encode()),
    )
    return max(cur.rowcount, 0)
