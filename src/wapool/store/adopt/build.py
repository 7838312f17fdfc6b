"""Turn a device taken from a source into a complete working store, through whatsmeow itself.

The store is built in a private temporary file, never in place: the source's own schema (a
SQLite source's DDL, as it was) or, for other sources, the schema the current whatsmeow creates;
then the device's rows; then change capture is installed on that schema and the store is
upgraded exactly as provisioning upgrades a store after a neonize upgrade (triggers out of the
way, neonize upgrades the schema, triggers regenerated). neonize then reports the devices it
loads from the result, which must be the adopted one. The rows of the result, with its schema,
are what the PostgreSQL copy and this host's working store are made of.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from wapool.store import pg_copy
from wapool.store.adopt.source import DEVICE_TABLE, BadSource, Row, Taken
from wapool.store.capture import drop_capture, install_capture
from wapool.store.devices import same_device
from wapool.store.dump import as_triples, dump_rows
from wapool.store.export_file import ExportFile
from wapool.store.schema import quote, read_schema
from wapool.store.working_store import connection, transaction

SchemaMaker = Callable[[Sequence[Path]], dict[Path, list[str]]]
#: Parents before children (foreign keys).
_FIRST = (DEVICE_TABLE, "whatsmeow_app_state_version")


@dataclass(frozen=True)
class Built:
    store: ExportFile
    #: Row keys per table in the built store (after whatsmeow's upgrade).
    counts: dict[str, int]
    #: The device's JID as whatsmeow loads it (an old store's upgrade may rewrite its form).
    jid: str


def build(taken: Taken, temp: Path, company_id: str, make_schema: SchemaMaker) -> Built:
    if taken.ddl:
        _from_source_schema(taken, temp)
    else:
        make_schema([temp])
        with closing(sqlite3.connect(temp, isolation_level=None)) as conn:
            _insert(conn, taken, strict_columns=True)
    with connection(temp) as conn:
        install_capture(conn)
    with connection(temp) as conn:
        drop_capture(conn)
        loaded = make_schema([temp]).get(temp, [])
        install_capture(conn)
    found = [jid for jid in loaded if same_device(jid, taken.jid)]
    if not found:
        raise BadSource(
            f"{taken.source}: whatsmeow does not load device {taken.jid} from the adopted store "
            f"(it loads: {', '.join(loaded) or 'nothing'})"
        )
    with connection(temp) as conn:
        rows = as_triples(dump_rows(conn))
        schema = read_schema(conn)
    counts: dict[str, int] = {}
    for table, _key, _image in rows:
        counts[table] = counts.get(table, 0) + 1
    export = ExportFile(
        company_id, rows, pg_copy.digest(rows), pg_copy.DDL_SEPARATOR.join(schema.ddl),
        schema.version, schema.fingerprint,
    )  # fmt: skip
    return Built(export, dict(sorted(counts.items())), found[0])


def _from_source_schema(taken: Taken, temp: Path) -> None:
    with closing(sqlite3.connect(temp, isolation_level=None)) as conn:
        with transaction(conn):
            for statement in taken.ddl:
                conn.execute(statement)
        _insert(conn, taken, strict_columns=False)


def _insert(conn: sqlite3.Connection, taken: Taken, *, strict_columns: bool) -> None:
    order = sorted(taken.tables, key=lambda t: (_FIRST.index(t) if t in _FIRST else len(_FIRST), t))
    with transaction(conn):
        for table in order:
            rows = taken.tables[table]
            if table == "whatsmeow_version" and not taken.ddl:
                continue
            columns = _columns(conn, table)
            if columns is None:
                if rows and strict_columns:
                    raise BadSource(f"{taken.source}: table {table} is unknown to this whatsmeow")
                continue
            for row in rows:
                _insert_row(conn, table, row, columns, taken.source, strict_columns)


def _columns(conn: sqlite3.Connection, table: str) -> list[str] | None:
    found = [str(r[1]) for r in conn.execute(f"PRAGMA table_info({quote(table)})")]
    return found or None


def _insert_row(
    conn: sqlite3.Connection, table: str, row: Row, columns: list[str], source: str, strict: bool
) -> None:
    unknown = [c for c in row if c not in columns]
    if unknown and strict:
        raise BadSource(f"{source}: {table}.{unknown[0]} is unknown to this whatsmeow")
    names = [c for c in row if c in columns]
    marks = ", ".join("?" for _ in names)
    try:
        conn.execute(
            f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in names)}) VALUES ({marks})",
            [row[c] for c in names],
        )
    except sqlite3.IntegrityError as exc:
        raise BadSource(f"{source}: a row of {table} breaks whatsmeow's rules ({exc})") from None
