"""What whatsmeow's schema looks like in a working store, read from the live file.

The capture triggers, the PostgreSQL copy and restores are all generated from this, so a
whatsmeow schema upgrade (a new neonize) needs no code change here.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from functools import cached_property

TABLE_PREFIX = "whatsmeow_"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    #: Primary-key columns; empty for a rowid table (its key is the rowid).
    primary_key: tuple[str, ...]
    #: Column sets of UNIQUE constraints other than the primary key.
    unique: tuple[tuple[str, ...], ...]

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.primary_key or ("rowid",)


@dataclass(frozen=True)
class StoreSchema:
    tables: tuple[Table, ...]
    #: ``CREATE TABLE``/``CREATE INDEX`` statements of whatsmeow's objects, in creation order.
    ddl: tuple[str, ...]
    version: int

    @cached_property
    def fingerprint(self) -> str:
        """Changes when whatsmeow's DDL or its schema version changes (an upgrade). Computed
        once: the mirror compares it with every prefix it reads."""
        text = "\n".join([f"version {self.version}", *sorted(self.ddl)])
        return hashlib.sha256(text.encode()).hexdigest()

    def table(self, name: str) -> Table:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def read_schema(conn: sqlite3.Connection) -> StoreSchema:
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name LIKE 'whatsmeow\\_%' ESCAPE '\\' "
        "AND type IN ('table', 'index') AND sql IS NOT NULL ORDER BY rowid"
    ).fetchall()
    tables = tuple(_read_table(conn, name) for kind, name, _ in rows if kind == "table")
    version_row = None
    if any(t.name == "whatsmeow_version" for t in tables):
        version_row = conn.execute("SELECT max(version) FROM whatsmeow_version").fetchone()
    version = int(version_row[0]) if version_row and version_row[0] is not None else 0
    return StoreSchema(tables=tables, ddl=tuple(sql for _, _, sql in rows), version=version)


def _read_table(conn: sqlite3.Connection, name: str) -> Table:
    info = conn.execute(f"PRAGMA table_info({quote(name)})").fetchall()
    columns = tuple(row[1] for row in info)
    primary = tuple(row[1] for row in sorted((r for r in info if r[5]), key=lambda r: r[5]))
    unique: list[tuple[str, ...]] = []
    for index in conn.execute(f"PRAGMA index_list({quote(name)})").fetchall():
        _, index_name, is_unique, origin, _ = index[:5]
        if is_unique and origin != "pk":
            cols = conn.execute(f"PRAGMA index_info({quote(index_name)})").fetchall()
            unique.append(tuple(c[2] for c in cols))
    return Table(name=name, columns=columns, primary_key=primary, unique=tuple(unique))
