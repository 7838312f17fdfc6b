"""A working store's rows in the mirror's encoding: {(table, key): image}.

``verify`` compares this with the PostgreSQL copy; ``export`` and tests use it too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import nullcontext

from wapool.store.schema import Table, quote, read_schema
from wapool.store.working_store import json_array_sql, transaction

Rows = dict[tuple[str, str], str]


def dump_rows(conn: sqlite3.Connection, *, own_transaction: bool = True) -> Rows:
    """Every whatsmeow row, read in one transaction (the caller's, if it has one open)."""
    rows: Rows = {}
    with transaction(conn) if own_transaction else nullcontext():
        for table in read_schema(conn).tables:
            for key, image in table_rows(conn, table):
                rows[(table.name, key)] = image
    return rows


def table_rows(conn: sqlite3.Connection, table: Table) -> Iterator[tuple[str, str]]:
    """(key, image) of every row of one table."""
    name = quote(table.name)
    query = (
        f"SELECT {json_array_sql(name, table.key_columns)}, "
        f"{json_array_sql(name, table.columns)} FROM {name}"
    )
    yield from conn.execute(query)


def as_triples(rows: Rows) -> list[tuple[str, str, str]]:
    return [(table, key, image) for (table, key), image in rows.items()]
