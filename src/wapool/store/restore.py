"""Rebuild a working store from the PostgreSQL copy, or from a cached snapshot.

The new file is built beside the old one, checked (``quick_check``), synced, and renamed over
it; whatever was there before is kept as ``store.db.replaced-<UTC time>`` (never deleted: it
may be an operator's last resort). The restored store keeps the copy's store identity and
continues its change-log sequence after ``applied_seq``, so the mirror carries on from there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path

from wapool.store import changelog
from wapool.store.capture import install_capture
from wapool.store.codec import decode_row, decode_value
from wapool.store.pg_copy import DDL_SEPARATOR, CopyMeta
from wapool.store.schema import quote, read_schema
from wapool.store.snapshot import Snapshot
from wapool.store.working_store import connect, quick_check, secure_files, transaction


def build_from_rows(path: Path, meta: CopyMeta, rows: list[tuple[str, str, str]]) -> None:
    """Write a complete store for ``meta``'s copy at ``path`` (replacing what is there)."""
    temp = _temp_path(path)
    # Not ``working_store.connect``: no WAL and no syncing while the file is private to us.
    with closing(sqlite3.connect(temp, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        with transaction(conn):
            for statement in meta.schema_ddl.split(DDL_SEPARATOR):
                conn.execute(statement)
            _insert_rows(conn, rows)
        install_capture(conn, store_uuid=meta.store_uuid, recheck=False)
        changelog.continue_after(conn, meta.applied_seq)
        conn.execute("PRAGMA journal_mode = WAL")
    _install(temp, path)


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[str, str, str]]) -> None:
    schema = read_schema(conn)
    by_table: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for table_name, key, image in rows:
        by_table[table_name].append((key, image))
    for name, entries in by_table.items():
        table = schema.table(name)
        columns = ", ".join(quote(c) for c in table.columns)
        marks = ", ".join("?" for _ in table.columns)
        if table.primary_key:
            conn.executemany(
                f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({marks})",
                (decode_row(image) for _, image in entries),
            )
        else:
            conn.executemany(
                f"INSERT INTO {quote(table.name)} (rowid, {columns}) VALUES (?, {marks})",
                ([decode_value(json.loads(key)[0]), *decode_row(image)] for key, image in entries),
            )


def build_from_snapshot(path: Path, snapshot: Snapshot) -> None:
    temp = _temp_path(path)
    with open(temp, "wb") as out:
        out.write(snapshot.image)
    _install(temp, path)


def _temp_path(path: Path) -> Path:
    temp = path.with_name(f"{path.name}.restoring-{os.getpid()}")
    for leftover in (temp, temp.with_name(temp.name + "-journal")):
        leftover.unlink(missing_ok=True)
    fd = os.open(temp, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    return temp


def _install(temp: Path, path: Path) -> None:
    """Check, sync and atomically move ``temp`` to ``path``, keeping the old store aside."""
    quick_check(temp)
    _fsync(temp)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for suffix in ("", "-wal", "-shm"):
        old = path.with_name(path.name + suffix)
        if old.exists():
            os.replace(old, path.with_name(f"{path.name}.replaced-{stamp}{suffix}"))
    os.replace(temp, path)
    _fsync(path.parent)
    connect(path).close()  # WAL mode, permissions
    secure_files(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
