"""The main process's messaging bookkeeping: ``$WAPOOL_STATE_DIR/messaging.db`` (SQLite, WAL).

How far each consumer of each company's inbox got, kept apart from the inboxes so the worker
writing an inbox never waits on these writes:

* ``cursors`` — (company, consumer) -> (inbox identity, seq): every event up to ``seq`` of that
  inbox is done for that consumer (``postgres``: in ``inbound_messages``; ``webhook``: delivered
  or dead). A cursor kept for another inbox identity counts as 0 (the inbox was replaced).
* ``delivered`` — webhook deliveries above the webhook cursor (chats finish out of order), so a
  restart does not send them again;
* ``dead_letters`` — events the webhook gave up on (``WAPOOL_WEBHOOK_MAX_AGE``).

Callers batch their writes (``save``): one transaction carries many companies' progress.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wapool.store.working_store import BUSY_TIMEOUT_MS, secure_files, transaction

CURSORS_FILE = "messaging.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    company  TEXT NOT NULL,
    consumer TEXT NOT NULL,
    inbox    TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (company, consumer)
);
CREATE TABLE IF NOT EXISTS delivered (
    company TEXT NOT NULL,
    inbox   TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (company, inbox, seq)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    company   TEXT NOT NULL,
    inbox     TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    event_id  TEXT NOT NULL,
    chat      TEXT NOT NULL,
    attempts  INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    failed_at REAL NOT NULL,
    PRIMARY KEY (company, inbox, seq)
);
"""


@dataclass(frozen=True)
class DeadLetter:
    company: str
    seq: int
    event_id: str
    chat: str
    attempts: int
    reason: str
    failed_at: float


@dataclass
class Progress:
    """What one ``save`` writes: cursors moved, deliveries done, dead letters."""

    cursors: dict[tuple[str, str], tuple[str, int]]
    delivered: list[tuple[str, str, int]]
    dead: list[tuple[str, str, DeadLetter]]

    @classmethod
    def empty(cls) -> Progress:
        return cls({}, [], [])

    def __bool__(self) -> bool:
        return bool(self.cursors or self.delivered or self.dead)


class Cursors:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.executescript(SCHEMA)
        secure_files(path)
        self._lock = threading.Lock()

    def get(self, company: str, consumer: str, inbox: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT inbox, seq FROM cursors WHERE company = ? AND consumer = ?",
                (company, consumer),
            ).fetchone()
        return int(row[1]) if row is not None and row[0] == inbox else 0

    def delivered_above(self, company: str, inbox: str, seq: int) -> set[int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq FROM delivered WHERE company = ? AND inbox = ? AND seq > ? "
                "UNION SELECT seq FROM dead_letters WHERE company = ? AND inbox = ? AND seq > ?",
                (company, inbox, seq, company, inbox, seq),
            ).fetchall()
        return {int(r[0]) for r in rows}

    def save(self, progress: Progress) -> None:
        """Write it all in one transaction (durable on return)."""
        with self._lock, transaction(self._conn, immediate=True):
            self._conn.executemany(
                "INSERT OR IGNORE INTO delivered (company, inbox, seq) VALUES (?, ?, ?)",
                progress.delivered,
            )
            self._conn.executemany(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (d.company, inbox, d.seq, d.event_id, d.chat, d.attempts, d.reason, d.failed_at)
                    for _company, inbox, d in progress.dead
                ],
            )
            for (company, consumer), (inbox, seq) in progress.cursors.items():
                self._conn.execute(
                    "INSERT INTO cursors (company, consumer, inbox, seq) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (company, consumer) DO UPDATE SET inbox = excluded.inbox, "
                    "seq = excluded.seq",
                    (company, consumer, inbox, seq),
                )
                if consumer == "webhook":  # what the cursor covers needs no record any more
                    self._conn.execute(
                        "DELETE FROM delivered WHERE company = ? AND (inbox != ? OR seq <= ?)",
                        (company, inbox, seq),
                    )

    def lowest(self, company: str, inbox: str, consumers: Iterable[str]) -> int:
        """The seq every one of ``consumers`` has passed (what an inbox may trim)."""
        return min((self.get(company, c, inbox) for c in consumers), default=0)

    def dead_letters(self, company: str | None = None, limit: int = 100) -> list[DeadLetter]:
        sql = "SELECT company, seq, event_id, chat, attempts, reason, failed_at FROM dead_letters"
        params: tuple[object, ...] = ()
        if company is not None:
            sql, params = sql + " WHERE company = ?", (company,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY failed_at DESC LIMIT ?", (*params, limit))
            return [DeadLetter(*row) for row in rows.fetchall()]

    def dead_letter_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT company, count(*) FROM dead_letters GROUP BY company"
            ).fetchall()
        return {str(c): int(n) for c, n in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
