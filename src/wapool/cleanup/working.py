"""Deleting expired rows from a working store, in short write transactions.

The keys come from PostgreSQL, whose ``written_at`` is as fresh as the mirror's last apply
(``applied_seq``). A key written locally after that has a change-log entry with a higher
sequence number, so each batch skips every key with a newer upsert in the log. The mirror may
apply and trim such an entry between two batches; the pruner notices (sequence numbers it never
saw are gone from the log) and asks for a fresh page instead of trusting the old one.

A batch is deleted with one statement and logged as one purge entry (``store.purge``), not as
one change-log entry per row, so the mirror repeats it in PostgreSQL with one range delete.
Each batch holds SQLite's write lock for tens of milliseconds (whatsmeow waits up to 5 s); the
batch size adapts so that one transaction stays near ``target_lock_seconds``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from wapool.store import purge
from wapool.store.changelog import last_seq
from wapool.store.schema import Table, read_schema
from wapool.store.working_store import connect

#: The pruner's page cache (KiB): a batch touches thousands of scattered pages.
CACHE_KIB = 64 * 1024


class StalePage(Exception):
    """The mirror applied changes this pruner has not seen: fetch the keys again."""


@dataclass
class BatchResult:
    rows: int = 0
    bytes: int = 0
    skipped: int = 0
    lock_seconds: float = 0.0
    checkpoint_seconds: float = 0.0


@dataclass
class Pruner:
    """One company's working store, one table at a time."""

    path: Path
    target_lock_seconds: float = 0.08
    batch_rows: int = 5_000
    max_batch_rows: int = 20_000
    longest_lock: float = 0.0
    longest_checkpoint: float = 0.0
    _conn: sqlite3.Connection | None = None
    _tables: dict[str, Table] = field(default_factory=dict)
    _recent: set[tuple[str, str]] = field(default_factory=set)
    _scanned_to: int = -1

    def open(self) -> None:
        """Connect and note every key with a pending upsert (read transaction, no lock)."""
        self._conn = connect(self.path)
        self._conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        # Checkpointed explicitly after each batch, once the write lock is released.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        purge.prepare(self._conn)
        self._conn.execute("BEGIN")
        try:
            self._tables = {t.name: t for t in read_schema(self._conn).tables}
            self._scan(0)
            self._scanned_to = last_seq(self._conn)
        finally:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def has_table(self, table: str) -> bool:
        return table in self._tables

    def delete(
        self,
        table: str,
        keys: list[tuple[str, int]],
        *,
        after: str,
        cutoff: datetime,
        read_seq: int,
    ) -> BatchResult:
        """Delete these keys (``(pk, bytes)``, the page's keys in (``after``, last key]) unless
        written since ``read_seq``; one write transaction, one purge entry."""
        conn = self._connection()
        result = BatchResult()
        conn.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        try:
            self._check_fresh(conn, read_seq)
            self._scan(self._scanned_to)
            wanted = [(pk, size) for pk, size in keys if (table, pk) not in self._recent]
            result.skipped = len(keys) - len(wanted)
            if wanted:
                entry = purge.Purge(table, after, keys[-1][0], cutoff, read_seq)
                result.rows = purge.purge(
                    conn, self._tables[table], [pk for pk, _ in wanted], entry
                )
            planned = sum(size for _, size in wanted)
            # Keys whatsmeow deleted meanwhile are simply not there: bytes scale with what went.
            result.bytes = planned * result.rows // max(len(wanted), 1)
            self._scanned_to = last_seq(conn)  # our own purge: nothing to watch for
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        result.lock_seconds = time.perf_counter() - started
        self.longest_lock = max(self.longest_lock, result.lock_seconds)
        self._adapt(len(keys), result.lock_seconds)
        result.checkpoint_seconds = self._checkpoint(conn)
        return result

    def _checkpoint(self, conn: sqlite3.Connection) -> float:
        """Copy the batch's pages from the WAL into the database now, so that whatsmeow's next
        commit does not find a big WAL to checkpoint itself. PASSIVE: nobody waits on it."""
        started = time.perf_counter()
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        seconds = time.perf_counter() - started
        self.longest_checkpoint = max(self.longest_checkpoint, seconds)
        return seconds

    def _check_fresh(self, conn: sqlite3.Connection, applied_seq: int) -> None:
        """Raise ``StalePage`` if entries after what we scanned were trimmed unseen."""
        newest = last_seq(conn)
        if newest <= self._scanned_to:
            return
        row = conn.execute(
            "SELECT min(seq) FROM wapool_changelog WHERE seq > ?", (self._scanned_to,)
        ).fetchone()
        first = row[0] if row else None
        newest_trimmed = newest if first is None else int(first) - 1
        if newest_trimmed > self._scanned_to and newest_trimmed > applied_seq:
            # Trimmed means applied in PostgreSQL: a fresh page reflects those writes.
            self._scan(self._scanned_to)
            self._scanned_to = newest
            raise StalePage

    def _scan(self, after: int) -> None:
        conn = self._connection()
        for table, pk in conn.execute(
            "SELECT tbl, pk FROM wapool_changelog WHERE seq > ? AND op <> 'D'", (after,)
        ):
            self._recent.add((table, pk))

    def _adapt(self, rows: int, seconds: float) -> None:
        if rows < self.batch_rows:
            return
        if seconds > self.target_lock_seconds * 1.5:
            self.batch_rows = max(100, self.batch_rows // 2)
        elif seconds < self.target_lock_seconds / 2:
            self.batch_rows = min(self.max_batch_rows, self.batch_rows * 2)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("Pruner.open() first")
        return self._conn
