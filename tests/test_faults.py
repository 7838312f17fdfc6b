"""Which store errors prove a file broken (and may lead to a rebuild), on real SQLite files."""

from __future__ import annotations

import errno
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from wapool.store.faults import Fault, StoreFault, classify, classify_text
from wapool.store.inspection import inspect_local
from wapool.store.working_store import connect, quick_check


def _store(path: Path) -> Path:
    with closing(connect(path)) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        conn.executemany("INSERT INTO t (v) VALUES (randomblob(500))", [()] * 300)
    return path


def test_sqlite_says_what_is_proven(tmp_path: Path) -> None:
    path = _store(tmp_path / "s.db")
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size // 2)
    with pytest.raises(StoreFault) as malformed:
        quick_check(path)
    assert malformed.value.fault is Fault.CORRUPT
    path.write_bytes(b"not a database at all" * 50)
    with pytest.raises(StoreFault) as header:
        quick_check(path)
    assert header.value.fault is Fault.CORRUPT
    assert "header" in str(header.value)


def test_nothing_else_is_proof(tmp_path: Path) -> None:
    assert inspect_local(tmp_path / "absent.db").fault is Fault.MISSING
    directory = tmp_path / "a-folder.db"
    directory.mkdir()
    assert inspect_local(directory).fault is Fault.UNREADABLE
    cant_open = sqlite3.OperationalError("unable to open database file")
    cant_open.sqlite_errorcode = sqlite3.SQLITE_CANTOPEN  # type: ignore[attr-defined]
    assert classify(cant_open) is Fault.UNREADABLE
    assert classify(PermissionError(errno.EACCES, "Permission denied")) is Fault.UNREADABLE
    assert classify(OSError(errno.EMFILE, "Too many open files")) is Fault.UNREADABLE
    assert classify(OSError(errno.EIO, "Input/output error")) is Fault.UNREADABLE
    assert classify(OSError(errno.ENOSPC, "No space left on device")) is Fault.FULL
    assert classify(OSError(errno.EFBIG, "File too large")) is Fault.FULL
    assert not Fault.UNREADABLE.proven
    assert not Fault.FULL.proven


def test_a_full_disk_is_full(tmp_path: Path) -> None:
    path = _store(tmp_path / "s.db")
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(sqlite3.OperationalError) as full:
            conn.execute("INSERT INTO t (v) VALUES (randomblob(100000))")
    assert classify(full.value) is Fault.FULL


def test_neonize_messages_are_recognised() -> None:
    assert classify_text("failed to load device: database disk image is malformed") is Fault.CORRUPT
    assert classify_text("upgrade: file is not a database") is Fault.CORRUPT
    assert classify_text("sql: database or disk is full") is Fault.FULL
    assert classify_text("unable to open database file: permission denied") is Fault.UNREADABLE
    assert classify_text("failed to dial: no such host") is None
