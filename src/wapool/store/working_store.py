"""A company's working store: ``$WAPOOL_STATE_DIR/<company>/store.db`` in whatsmeow's schema.

whatsmeow (in a worker) writes it; wapool opens its own connections to read the change log,
trim it, apply cleanup deletes and check integrity. Those connections wait on whatsmeow's locks
(busy timeout) rather than fail, and keep their own transactions short so whatsmeow never waits
long on them. Directory 0700, files 0600: they hold the account's private keys.

Every wapool transaction on a SQLite file goes through ``transaction`` (autocommit connections,
explicit ``BEGIN``): ``immediate=True`` for writes to a live store, which take the write lock up
front (waiting in the busy handler) instead of failing when a read turns into a write; plain
``BEGIN`` for a consistent read snapshot, and for writes to a file nobody else has open yet.

Whatever only looks (``quick_check``, ``wapool status`` and ``verify``) opens the file with
``read_only``: it never creates, converts or re-permissions anything, so an operator running
the CLI as another user leaves no files behind that the daemon could not open. Errors leave
this module as ``StoreFault`` (see ``faults``): only a proven fault may lead to a rebuild.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from wapool.registry.company import validate_company_id
from wapool.store.codec import sql_encode
from wapool.store.faults import SQLITE_ERRORS, Fault, StoreFault, as_fault
from wapool.store.schema import quote

STORE_FILE = "store.db"
BUSY_TIMEOUT_MS = 10_000
SQLITE_MAGIC = b"SQLite format 3\x00"


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
    except sqlite3.Error as exc:
        conn.close()
        raise as_fault(exc, path) from None
    secure_files(path)
    return conn


def read_only(path: Path) -> sqlite3.Connection:
    """A connection that can only read, and creates nothing beside the file.

    A store nobody has open (no ``-wal``) is opened ``immutable``: SQLite then needs no
    ``-shm`` file, which a read-only connection would otherwise create and leave behind."""
    idle = not path.with_name(path.name + "-wal").exists()
    uri = path.absolute().as_uri() + "?mode=ro" + ("&immutable=1" if idle else "")
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
    except sqlite3.Error as exc:
        raise as_fault(exc, path) from None
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


def fsync_path(path: Path) -> None:
    """Make ``path`` (a file, or a directory after a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def secure_files(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if candidate.exists():
            os.chmod(candidate, 0o600)


def check_header(path: Path) -> None:
    """Raise ``StoreFault`` unless the file can be read and starts as an SQLite database does
    (an empty file is an empty database to SQLite)."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise as_fault(exc, path) from None
    if head and head != SQLITE_MAGIC:
        raise StoreFault(Fault.CORRUPT, f"{path}: not an SQLite database (header)")


def quick_check(path: Path) -> None:
    """Raise ``StoreFault`` unless the file opens and passes ``PRAGMA quick_check``; only a
    ``missing`` or ``corrupt`` fault proves the file unusable."""
    check_header(path)
    try:
        with closing(read_only(path)) as conn:
            conn.text_factory = lambda raw: raw.decode(errors="replace")  # damage is not UTF-8
            rows = conn.execute("PRAGMA quick_check").fetchall()
    except SQLITE_ERRORS as exc:
        raise as_fault(exc, path) from None
    if rows != [("ok",)]:
        detail = "; ".join(str(r[0]) for r in rows[:3])
        raise StoreFault(Fault.CORRUPT, f"{path}: quick_check: {detail}")
