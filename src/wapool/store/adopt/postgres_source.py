"""``--from-postgres DSN --jid JID``: one device of a whatsmeow PostgreSQL database (wuzapi,
mautrix-whatsapp, neonize on a PostgreSQL URL), read in one read-only, repeatable-read
transaction: nothing is ever written to the source, and the rows are one consistent snapshot.

Values come back as PostgreSQL types and are turned into what whatsmeow writes to SQLite
(booleans as integers, the Facebook UUID as text). The DSN is a secret: messages name only its
host and database.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from wapool.observability.redact import redact
from wapool.store.adopt.source import (
    DEVICE_TABLE,
    VERSION_QUERY,
    BadSource,
    Row,
    Taken,
    checked_version,
    device_column,
)
from wapool.store.codec import SQLiteValue

CONNECT_TIMEOUT = 10


def describe_dsn(dsn: str) -> str:
    """``postgres host/db`` for messages and records (never the password)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgres (unparsable DSN)"
    return f"postgres {parts.get('host') or 'localhost'}/{parts.get('dbname') or '?'}"


def take_postgres(dsn: str, jid: str) -> Taken:
    where = describe_dsn(dsn)
    try:
        conn = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=False)
    except psycopg.Error as exc:
        raise BadSource(f"{where}: cannot connect ({_one_line(exc)})") from None
    try:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            return _take(conn, jid, where)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise BadSource(
            f"{where}: the role may not read the whatsmeow tables ({_one_line(exc)})"
        ) from None
    except psycopg.Error as exc:
        raise BadSource(f"{where}: cannot read it ({_one_line(exc)})") from None
    finally:
        conn.close()


def _take(conn: psycopg.Connection[Any], jid: str, where: str) -> Taken:
    tables = [
        str(r[0])
        for r in conn.execute(
            # pg_class, not information_schema: a role without privileges must see the tables
            # (and be told it may not read them), not be told there are none.
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            "AND c.relname LIKE 'whatsmeow\\_%' ORDER BY c.relname"
        )
    ]
    version = checked_version(
        tables, lambda: conn.execute(VERSION_QUERY).fetchone(), where, "database"
    )
    taken: dict[str, list[Row]] = {}
    for table in tables:
        if table != "whatsmeow_version":
            taken[table] = _rows(conn, table, jid)
    if not taken[DEVICE_TABLE]:
        jids = [str(r[0]) for r in conn.execute(f"SELECT jid FROM {DEVICE_TABLE} ORDER BY jid")]
        raise BadSource(f"{where}: no device {jid} (devices: {', '.join(jids) or 'none'})")
    return Taken(where, jid, taken, version)


def _rows(conn: psycopg.Connection[Any], table: str, jid: str) -> list[Row]:
    query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))
    with conn.cursor() as cur:
        cur.execute(query + sql.SQL(" LIMIT 0"))
        columns = [d.name for d in cur.description or ()]
        column = device_column(columns)
        if column is None:
            cur.execute(query)
        else:
            cur.execute(query + sql.SQL(" WHERE {} = %s").format(sql.Identifier(column)), (jid,))
        return [
            {c: _sqlite_value(v) for c, v in zip(columns, row, strict=True)}
            for row in cur.fetchall()
        ]


def _sqlite_value(value: object) -> SQLiteValue:
    if value is None or isinstance(value, str | bytes | float):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def _one_line(exc: BaseException) -> str:
    return redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)[
        :200
    ]
