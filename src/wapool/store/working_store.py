"""A company's working store: ``$WAPOOL_STATE_DIR/<company>/store.db`` in whatsmeow's schema.

whatsmeow (in a worker) writes it; wapool opens its own connections to read the change log,
trim it, apply cleanup deletes and check integrity. Those connections wait on whatsmeow's locks
(busy timeout) rather than fail, and keep their own transactions short so whatsmeow never waits
long on them. Directory 0700, files 0600: they hold the account's private keys.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from wapool.registry.company import validate_company_id

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


def secure_files(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if candidate.exists():
            os.chmod(candidate, 0o600)


def quick_check(path: Path) -> None:
    """Raise ``CorruptStore`` unless the file opens and passes ``PRAGMA quick_check``."""
    if not path.exists():
        raise CorruptStore(f"{path}: missing")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise CorruptStore(f"{path}: {exc}") from None
    if rows != [("ok",)]:
        raise CorruptStore(f"{path}: quick_check: {'; '.join(str(r[0]) for r in rows[:3])}")
