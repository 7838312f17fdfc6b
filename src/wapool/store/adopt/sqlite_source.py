"""``--from-sqlite FILE``: one device of a whatsmeow SQLite store (neonize 0.3.x onward, or any
whatsmeow-based tool), read from a private copy so the source is never written.

The store file (and its ``-wal`` or hot ``-journal``, as SQLite would read them) is copied into a
private directory first: opening the original, even read-only, could create a ``-shm`` beside
it or replay its WAL. The copy is checked (``quick_check``), its schema version read, and the
chosen device's rows taken with the source's own DDL, so the current whatsmeow upgrades them as
it would upgrade the old store itself.
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

from wapool.store.adopt.source import (
    DEVICE_TABLE,
    VERSION_QUERY,
    BadSource,
    Row,
    Taken,
    checked_version,
    device_column,
)
from wapool.store.schema import TABLE_PREFIX, quote


def take_sqlite(source: Path, jid: str | None, workdir: Path) -> Taken:
    """The device ``jid`` (or the only one) of the whatsmeow store at ``source``."""
    where = f"sqlite {source}"
    copy = _private_copy(source, workdir, where)
    try:
        conn = sqlite3.connect(copy, isolation_level=None)
    except sqlite3.Error as exc:
        raise BadSource(f"{where}: cannot open it ({exc})") from None
    with closing(conn):
        try:
            return _take(conn, jid, where)
        except sqlite3.DatabaseError as exc:
            raise BadSource(f"{where}: not a readable SQLite store ({_first_line(exc)})") from None


def _private_copy(source: Path, workdir: Path, where: str) -> Path:
    if not source.is_file():
        raise BadSource(f"{where}: no such file" if not source.exists() else f"{where}: not a file")
    copy = workdir / "source.db"
    try:
        shutil.copyfile(source, copy)
        for suffix in ("-wal", "-journal"):  # committed, or to be rolled back: as SQLite would
            companion = source.with_name(source.name + suffix)
            if companion.exists():
                shutil.copyfile(companion, copy.with_name(copy.name + suffix))
    except OSError as exc:
        raise BadSource(f"{where}: cannot read it ({exc.strerror})") from None
    return copy


def _take(conn: sqlite3.Connection, jid: str | None, where: str) -> Taken:
    problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise BadSource(f"{where}: damaged store: SQLite finds {problems[0].splitlines()[0][:120]}")
    tables = {
        str(name): str(sql)
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name LIKE 'whatsmeow\\_%' "
            "ESCAPE '\\' ORDER BY rowid"
        )
    }
    version = checked_version(
        tables, lambda: conn.execute(VERSION_QUERY).fetchone(), where, "store"
    )
    chosen = _choose(conn, jid, where)
    taken: dict[str, list[Row]] = {}
    for name in tables:
        taken[name] = _rows(conn, name, chosen)
    indexes = [
        str(sql)
        for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            "AND tbl_name LIKE 'whatsmeow\\_%' ESCAPE '\\' ORDER BY rowid"
        )
    ]
    return Taken(where, chosen, taken, version, ddl=(*tables.values(), *indexes))


def _choose(conn: sqlite3.Connection, jid: str | None, where: str) -> str:
    jids = [str(r[0]) for r in conn.execute(f"SELECT jid FROM {DEVICE_TABLE} ORDER BY jid")]
    if jid is not None:
        if jid not in jids:
            held = ", ".join(jids) or "none"
            raise BadSource(f"{where}: no device {jid} (devices: {held})")
        return jid
    if not jids:
        raise BadSource(f"{where}: holds no device (never paired, or logged out)")
    if len(jids) > 1:
        raise BadSource(
            f"{where}: holds {len(jids)} devices ({', '.join(jids)}): choose with --jid"
        )
    return jids[0]


def _rows(conn: sqlite3.Connection, table: str, jid: str) -> list[Row]:
    cur = conn.execute(f"SELECT * FROM {quote(table)} LIMIT 0")
    columns = [d[0] for d in cur.description]
    column = device_column(columns)
    if not table.startswith(TABLE_PREFIX):
        return []
    query = f"SELECT * FROM {quote(table)}"
    cur = (
        conn.execute(query + f" WHERE {quote(column)} = ?", (jid,))
        if column
        else conn.execute(query)
    )
    return [dict(zip(columns, row, strict=True)) for row in cur]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]
