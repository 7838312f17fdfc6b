"""A company's working store: ``$WAPOOL_STATE_DIR/<company>/store.db`` in whatsmeow's schema.

whatsmeow (in a worker) writes it; wapool opens its own connections to read the change log,
trim it, apply cleanup deletes and check integrity. Those connections wait on whatsmeow's locks
(busy timeout) rather than fail, and keep their own transactions short so whatsmeow never waits
long on them. Directory 0700, files 0600: they hold the account's private keys.

Every wapool transaction on a SQLite file goes through ``transaction`` (autocommit connections,
explicit ``BEGIN``): ``immediate=True`` for writes to a live store, which take the write lock up
front (waiting in the busy handler) instead of failing when a read turns into a write; plain
``BEGIN`` for a consistent read snapshot, and for writes to a file nobody else has open yet.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from wapool.registry.company import validate_company_id
from wapool.store.codec import sql_encode
from wapool.store.schema import quote

STORE_FILE = "store.db"
BUSY_TIMEOUT_MS = 10_000


class CorruptStore(Exception):
    """The file is not a usable SQLite database (``quick_check`` failed or it does not open)."""


def store_dir(state_dir: Path, company_id: str) -> Path:
    return state_dir / validate_company_id(company_id)


def store_path(state_dir: Path, company_id: str) -> Path:
    return store_dir(state_dir, company_id) / STORE_FILE


def prepare_dir(state_dir: Path, company_id: str) -> Path:
    """Create the company's directory (0700) and return the store path."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = store_dir(state_dir, company_id)
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    return directory / STORE_FILE


def connect(path: Path, *, wal: bool = True) -> sqlite3.Connection:
    """wapool's own connection: autocommit (explicit BEGIN), busy timeout, WAL, FKs on."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if wal:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL" if wal else "PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CorruptStore(f"{path}: {exc}") from None
    secure_files(path)
    return conn


@contextmanager
def connection(path: Path, *, wal: bool = True) -> Iterator[sqlite3.Connection]:
    """``connect``, closed when the block ends (a ``sqlite3.Connection`` block only commits)."""
    conn = connect(path, wal=wal)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection, *, immediate: bool = False) -> Iterator[None]:
    """One transaction on an autocommit connection: committed when the block ends (a ``return``
    included), rolled back when anything escapes it, even a ``KeyboardInterrupt``."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")  # a failed COMMIT must not leave the write lock held either
    except BaseException:
        # Some errors (a full disk, an interrupt) make SQLite roll back by itself; a second
        # ROLLBACK would then hide the original error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """A value of wapool's own ``wapool_meta`` table (store identity, capture fingerprint)."""
    row = conn.execute("SELECT value FROM wapool_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO wapool_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def json_array_sql(prefix: str, columns: tuple[str, ...]) -> str:
    """SQL building the mirror's JSON image of ``columns`` of the row ``prefix`` (``NEW``, a
    table name): a JSON array of tagged values (see ``codec``)."""
    return "json_array(" + ", ".join(sql_encode(f"{prefix}.{quote(c)}") for c in columns) + ")"


def secure_files(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if candidate.exists():
            os.chmod(candidate, 0o600)


def quick_check(path: Path) -> None:
    """Raise ``CorruptStore`` unless the file opens and passes ``PRAGMA quick_check``."""
    if not path.exists():
        raise CorruptStore(f"{path}: missing")
    read_only = f"file:{path}?mode=ro"
    try:
        with closing(sqlite3.connect(read_only, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)) as conn:
            rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise CorruptStore(f"{path}: {exc}") from None
    if rows != [("ok",)]:
        raise CorruptStore(f"{path}: quick_check: {'; '.join(str(r[0]) for r in rows[:3])}")
