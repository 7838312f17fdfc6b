"""What went wrong with a working store, and whether it proves the file is broken.

Only proof may lead to rebuilding a store from PostgreSQL: the file is missing, its header is
not SQLite's, SQLite says it is malformed (``SQLITE_CORRUPT``) or not a database
(``SQLITE_NOTADB``), or ``PRAGMA quick_check`` reports damage. Everything else says nothing
about the file's content — permissions, locks, descriptors, I/O errors, a full disk — and is
retried (with backoff, alerted) until it goes away; replacing the file then would drop every
change it holds that PostgreSQL lacks.

whatsmeow reports SQLite errors through Go's go-sqlite3, whose messages are SQLite's own
(``sqlite3_errstr``), so ``classify_text`` recognises the same faults in a neonize error.
"""

from __future__ import annotations

import errno
import sqlite3
from enum import StrEnum


class Fault(StrEnum):
    MISSING = "missing"
    CORRUPT = "corrupt"
    #: Permission, lock, descriptors, I/O: the file may be perfectly sound.
    UNREADABLE = "unreadable"
    #: No space left (or the file-size limit reached): writes fail, reads still work.
    FULL = "full"

    @property
    def proven(self) -> bool:
        """Does this fault prove the file cannot be used again (so it may be rebuilt)?"""
        return self in (Fault.MISSING, Fault.CORRUPT)


class StoreFault(Exception):
    """A working store that cannot be used now; ``fault`` says whether it is proven broken."""

    def __init__(self, fault: Fault, detail: str) -> None:
        super().__init__(f"{fault.value}: {detail}")
        self.fault = fault
        self.detail = detail


#: What SQLite calls can raise about a file: its own errors, and text it cannot decode (a
#: damaged page can put bytes that are not UTF-8 into a name or an error message).
SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)

_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})

#: SQLite's messages for its result codes, as go-sqlite3 passes them on.
_TEXTS = (
    ("database disk image is malformed", Fault.CORRUPT),
    ("file is not a database", Fault.CORRUPT),
    ("database or disk is full", Fault.FULL),
    ("unable to open database file", Fault.UNREADABLE),
    ("disk i/o error", Fault.UNREADABLE),
    ("attempt to write a readonly database", Fault.UNREADABLE),
    ("database is locked", Fault.UNREADABLE),
)


def classify(exc: BaseException) -> Fault:
    """The fault an error from SQLite or the file system stands for."""
    if isinstance(exc, StoreFault):
        return exc.fault
    if isinstance(exc, UnicodeDecodeError):
        return Fault.CORRUPT
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _CORRUPT_CODES:
            return Fault.CORRUPT
        if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
            return Fault.FULL
        return classify_text(str(exc)) or Fault.UNREADABLE
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return Fault.FULL
        if exc.errno in _MISSING_ERRNOS:
            return Fault.MISSING
    return Fault.UNREADABLE


def classify_text(message: str) -> Fault | None:
    """The store fault an error message names, if it names one (neonize's errors are text)."""
    lowered = message.lower()
    for text, fault in _TEXTS:
        if text in lowered:
            return fault
    return None


def as_fault(exc: BaseException, where: object) -> StoreFault:
    """``exc`` (from SQLite or the file system) as a ``StoreFault`` about ``where``."""
    if isinstance(exc, StoreFault):
        return exc
    return StoreFault(classify(exc), f"{where}: {exc}")
