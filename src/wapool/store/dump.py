"""A working store's rows in the mirror's encoding: {(table, key): image}.

``verify`` compares this with the PostgreSQL copy; ``export`` and tests use it too.
"""

from __future__ import annotations

import sqlite3
from contextlib import nullcontext

from wapool.store.schema import quote, read_schema
from wapool.store.working_store import json_array_sql, transaction

Rows = dict[tuple[str, str], str]


def dump_rows(conn: sqlite3.Connection, *, own_transaction: bool = True) -> Rows:
    """Every whatsmeow row, read in one transaction (the caller's, if it has one open)."""
    rows: Rows = {}
    with transaction(conn) if own_transaction else nullcontext():
        for table in read_schema(conn).tables:
            name = quote(table.name)
            query = (
                f"SELECT {json_array_sql(name, table.key_columns)}, "
                f"{json_array_sql(name, table.columns)} FROM {name}"
            )
            for key, image in conn.execute(query):
                rows[(table.name, key)] = image
    return rows


def as_triples(rows: Rows) -> list[tuple[str, str, str]]:
    return [(table, key, image) for (table, key), image in rows.items()]
