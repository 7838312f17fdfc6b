"""A company's local inbox: ``$WAPOOL_STATE_DIR/<company>/inbox.db`` (SQLite, WAL).

The worker hosting the company's client writes every inbound event here (``InboxWriter``)
*inside the client's event handler*, before it returns to whatsmeow: one short autocommit
``INSERT`` with ``synchronous=FULL``, so the event is on disk when the handler returns. Events
are numbered by ``seq`` (the order they were written); an event already present (same
``event_id``: WhatsApp redelivered a message) is not written again.

Only the worker writes new rows. The main process reads (``InboxReader``) and deletes old rows
that every consumer has passed (``trim``, in small batches, rarely); its own bookkeeping (how far
the mirror and the webhook got) lives in another file (``cursors``), so the worker's handler never
waits on the main process's transactions beyond a trim batch (milliseconds).

Reader API (for the main process):

* ``events_after(seq, limit)`` — messages and receipts in ``seq`` order;
* ``messages_after(seq, limit)`` — messages only (the PostgreSQL mirror);
* ``receipts_after(seq, limit)`` — receipts only (outbound statuses);
* ``events_between(after, upto, limit, kind)`` — what ``feed`` reads when a consumer is behind;
* ``high_seq()`` — the last ``seq`` written; ``identity()`` — the inbox's own id (cursors are
  kept per identity, so a replaced inbox is read from its start); ``trim(upto)``.

Each returns ``model.Envelope`` objects (``seq``, ``received_at``, the JSON ``body`` as
written, ``type``; ``data`` and ``event`` parse it on first use). The daemon's consumers read
through ``feed`` (one read per notice for all of them).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from wapool.messaging.model import Envelope, InboundEvent, event_id, event_type, to_json
from wapool.store.working_store import BUSY_TIMEOUT_MS, secure_files

INBOX_FILE = "inbox.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    type        TEXT NOT NULL,
    event_id    TEXT NOT NULL UNIQUE,
    chat        TEXT NOT NULL,
    received_at REAL NOT NULL,
    body        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO inbox_meta (key, value) VALUES ('identity', lower(hex(randomblob(16))));
"""
_INSERT = (
    "INSERT OR IGNORE INTO inbox (type, event_id, chat, received_at, body) VALUES (?, ?, ?, ?, ?)"
)
_COLUMNS = "seq, received_at, body, type"


def inbox_path(store: Path) -> Path:
    """The inbox beside a company's working store."""
    return store.with_name(INBOX_FILE)


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)
    secure_files(path)
    return conn


class InboxWriter:
    """The worker's side: ``append`` returns once the event is durable (thread-safe)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._conn = _open(path)
        self._lock = threading.Lock()

    def append(self, event: InboundEvent) -> int | None:
        """Write ``event``; its ``seq``, or None if the inbox already held it."""
        body = json.dumps(to_json(event), separators=(",", ":"), ensure_ascii=False)
        row = (event_type(event), event_id(event), event.chat, self._clock(), body)
        with self._lock:
            cur = self._conn.execute(_INSERT, row)
        return cur.lastrowid if cur.rowcount == 1 else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class InboxReader:
    """The main process's side: reads in ``seq`` order, trims what everyone has passed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = _open(path)

    def events_after(self, seq: int, limit: int = 1000) -> list[Envelope]:
        return self._select("seq > ?", (seq,), limit)

    def messages_after(self, seq: int, limit: int = 1000) -> list[Envelope]:
        return self._select("seq > ? AND type = 'message'", (seq,), limit)

    def receipts_after(self, seq: int, limit: int = 1000) -> list[Envelope]:
        return self._select("seq > ? AND type = 'receipt'", (seq,), limit)

    def events_between(
        self, after: int, upto: int, limit: int = 1000, kind: str | None = None
    ) -> list[Envelope]:
        """Events with ``after < seq <= upto`` (of type ``kind``, if given)."""
        if kind is None:
            return self._select("seq > ? AND seq <= ?", (after, upto), limit)
        return self._select("seq > ? AND seq <= ? AND type = ?", (after, upto, kind), limit)

    def identity(self) -> str:
        """A random id the inbox got when it was created: a cursor kept for another inbox
        (the file was replaced) starts again from 0 instead of skipping events."""
        row = self._conn.execute("SELECT value FROM inbox_meta WHERE key = 'identity'").fetchone()
        return str(row[0])

    def high_seq(self) -> int:
        row = self._conn.execute("SELECT max(seq) FROM inbox").fetchone()
        return int(row[0] or 0)

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM inbox").fetchone()[0])

    def trim(self, upto: int, older_than: float = float("inf"), batch: int = 1000) -> int:
        """Delete rows with ``seq <= upto`` written before ``older_than``, ``batch`` at a time
        (short write locks: the worker's handler waits milliseconds at most)."""
        deleted = 0
        while True:
            cur = self._conn.execute(
                "DELETE FROM inbox WHERE seq IN (SELECT seq FROM inbox WHERE seq <= ? "
                "AND received_at < ? ORDER BY seq LIMIT ?)",
                (upto, older_than, batch),
            )
            deleted += cur.rowcount
            if cur.rowcount < batch:
                return deleted

    def close(self) -> None:
        self._conn.close()

    def _select(self, where: str, params: tuple[int | str, ...], limit: int) -> list[Envelope]:
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM inbox WHERE {where} ORDER BY seq LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [Envelope(int(s), float(r), str(b), str(t)) for s, r, b, t in rows]
