"""Rebuild a working store from the PostgreSQL copy, or from a cached snapshot.

The new file is built beside the old one (``store.db.restoring-<pid>``, in rollback-journal
mode so that checking it creates no ``-wal``/``-shm``), checked (``quick_check``), synced, and
renamed over it; whatever was there before is kept as ``store.db.replaced-<UTC time>`` (see
``leftovers``: kept for the retention period, then pruned by the cleanup). The temporary file
is removed on every path, failures included. The restored store keeps the copy's store identity
and continues its change-log sequence after ``applied_seq``, so the mirror carries on from there.

Before provisioning replaces a store that may owe PostgreSQL changes, ``rescue`` saves them (or
names them); it is given the replaced copy's name in advance (``replaced_name``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from wapool.store import changelog
from wapool.store.capture import install_capture
from wapool.store.codec import decode_rows
from wapool.store.leftovers import remove_file_set
from wapool.store.monotonic import drop_own_sender_keys, fence_prekeys
from wapool.store.pg_copy import DDL_SEPARATOR, CopyMeta
from wapool.store.schema import quote, read_schema
from wapool.store.snapshot import Snapshot
from wapool.store.working_store import connect, fsync_path, quick_check, secure_files, transaction

log = logging.getLogger(__name__)


def replaced_name(path: Path) -> Path:
    """Where the store at ``path`` goes if it is replaced now (unique to the microsecond)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return path.with_name(f"{path.name}.replaced-{stamp}")


def build_from_rows(
    path: Path,
    meta: CopyMeta,
    rows: list[tuple[str, str, str]],
    keep_as: Path | None = None,
    *,
    prekey_mark: int = 0,
    prekey_gap: int | None = 0,
) -> Path | None:
    """Write a complete store for ``meta``'s copy at ``path``; the store it replaces (if any)
    is kept as ``keep_as`` (default ``replaced_name(path)``), which is returned.

    What must stay monotonic is then seen to (``monotonic``): pre-keys numbered beyond
    ``prekey_mark + prekey_gap``, our own sender keys gone; both are logged changes, so the
    mirror carries them to the copy. ``prekey_gap=None``: the copy is known complete (a graceful
    handoff drained it): nothing to see to."""
    with temporary(path) as temp:
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
            if prekey_gap is not None:
                _never_go_back(conn, meta.company_id, prekey_mark, prekey_gap)
            conn.execute("PRAGMA journal_mode = DELETE")
        return _install(temp, path, keep_as or replaced_name(path))


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
                decode_rows(image for _, image in entries),
            )
        else:
            conn.executemany(
                f"INSERT INTO {quote(table.name)} (rowid, {columns}) VALUES (?, {marks})",
                (
                    [*rowid, *values]
                    for rowid, values in zip(
                        decode_rows(key for key, _ in entries),
                        decode_rows(image for _, image in entries),
                        strict=True,
                    )
                ),
            )


def _never_go_back(conn: sqlite3.Connection, company_id: str, mark: int, gap: int) -> None:
    with transaction(conn):
        fence_prekeys(conn, company_id, mark, gap)
        dropped = drop_own_sender_keys(conn)
    if dropped:
        log.info("own_sender_keys_dropped", extra={"company": company_id, "count": dropped})


def build_from_snapshot(
    path: Path, snapshot: Snapshot, keep_as: Path | None = None, prekey_gap: int = 0
) -> Path | None:
    with temporary(path) as temp:
        with open(temp, "wb") as out:
            out.write(snapshot.image)
        with closing(sqlite3.connect(temp, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode = DELETE")  # the image is in WAL mode
            _never_go_back(conn, snapshot.company_id, 0, prekey_gap)
        return _install(temp, path, keep_as or replaced_name(path))


@contextmanager
def temporary(path: Path) -> Iterator[Path]:
    """A private file beside ``path``; whatever is left of it is removed when the block ends."""
    temp = path.with_name(f"{path.name}.restoring-{os.getpid()}")
    remove_file_set(temp)
    os.close(os.open(temp, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        yield temp
    finally:
        remove_file_set(temp)


def _install(temp: Path, path: Path, keep_as: Path) -> Path | None:
    """Check, sync and atomically move ``temp`` to ``path``, keeping the old store aside."""
    quick_check(temp)
    fsync_path(temp)
    kept = None
    for suffix in ("", "-wal", "-shm"):
        old = path.with_name(path.name + suffix)
        if old.exists():
            os.replace(old, keep_as.with_name(keep_as.name + suffix))
            kept = keep_as
    os.replace(temp, path)
    fsync_path(path.parent)
    connect(path).close()  # WAL mode, permissions
    secure_files(path)
    return kept
