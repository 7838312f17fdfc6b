"""Deleting expired rows from a working store, in short write transactions.

The keys come from PostgreSQL, whose ``written_at`` is as fresh as the mirror's last apply
(``applied_seq``). A key written locally after that has a change-log entry with a higher
sequence number, so each batch skips every key with a newer upsert in the log. The mirror may
apply and trim such an entry between the read and the delete; the pruner notices (sequence
numbers it never saw are gone from the log) and, still holding the write lock so that no more
can be trimmed, asks PostgreSQL which keys of the batch were written since the read. Every
entry trimmed had been committed in PostgreSQL first, so the answer is complete.

A batch is deleted with one statement and logged as one purge entry (``store.purge``), not as
one change-log entry per row, so the mirror repeats it in PostgreSQL with one range delete.
Each batch holds SQLite's write lock for tens of milliseconds (whatsmeow waits up to 5 s); the
batch size adapts so that one transaction stays near ``target_lock_seconds``. Between two
batches the lock stays free for at least ``min_gap_seconds``: SQLite's busy handler, which
whatsmeow and the mirror wait in, polls every 25 ms or so in its first 130 ms of waiting, so a
writer that found the lock taken gets its turn in the next gap instead of starving behind
back-to-back batches.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from wapool.store import changelog, purge
from wapool.store.schema import Table, read_schema
from wapool.store.working_store import connect, transaction

#: The pruner's page cache (KiB): a batch touches thousands of scattered pages.
CACHE_KIB = 64 * 1024
#: Read the store through a memory map (SQLite caps it at 2 GiB): no system call per page read.
MMAP_BYTES = 1 << 31


class OutdatedCapture(Exception):
    """The store's capture objects were installed by an older wapool (the daemon upgrades them)."""


class StalePage(Exception):
    """The mirror applied changes this pruner has not seen: fetch the keys again."""


@dataclass
class BatchResult:
    rows: int = 0
    bytes: int = 0
    skipped: int = 0
    lock_seconds: float = 0.0
    recheck_seconds: float = 0.0


@dataclass
class Pruner:
    """One company's working store, one table at a time."""

    path: Path
    target_lock_seconds: float = 0.05
    min_gap_seconds: float = 0.03
    batch_rows: int = 5_000
    max_batch_rows: int = 8_000
    longest_lock: float = 0.0
    #: Every batch's lock time (seconds), for the run's figures.
    locks: list[float] = field(default_factory=list)
    #: Batches checked against PostgreSQL because the mirror applied writes meanwhile.
    rechecks: int = 0
    longest_recheck: float = 0.0
    _conn: sqlite3.Connection | None = None
    #: A second connection, so a checkpoint can run while the next batch is deleted.
    _checkpointer: sqlite3.Connection | None = None
    _tables: dict[str, Table] = field(default_factory=dict)
    _recent: set[tuple[str, str]] = field(default_factory=set)
    _scanned_to: int = -1
    _released_at: float = float("-inf")

    def open(self) -> None:
        """Connect and note every key with a pending upsert (read transaction, no lock)."""
        self._conn = connect(self.path)
        self._conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        # Checkpointed explicitly after each batch, once the write lock is released.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer = connect(self.path)
        purge.prepare(self._conn)
        if not changelog.logs_purges(self._conn):
            raise OutdatedCapture(
                f"{self.path}: its change capture predates cleanup purges; "
                "start the daemon once to upgrade it"
            )
        with transaction(self._conn):
            self._tables = {t.name: t for t in read_schema(self._conn).tables}
            self._scan(0)
            self._scanned_to = changelog.last_seq(self._conn)

    def close(self) -> None:
        for conn in (self._conn, self._checkpointer):
            if conn is not None:
                conn.close()
        self._conn = self._checkpointer = None

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
        rewritten: Callable[[], list[str]] | None = None,
    ) -> BatchResult:
        """Delete these keys (``(pk, bytes)``, the page's keys in (``after``, last key]) unless
        written since ``read_seq``; one write transaction, one purge entry.

        ``rewritten`` returns the keys of the batch PostgreSQL shows as written after
        ``read_seq``; it is called, with the write lock held (so the mirror cannot trim more
        meanwhile), only when the mirror trimmed entries this pruner never saw. Without it,
        that case raises ``StalePage``."""
        conn = self._connection()
        result = BatchResult()
        time.sleep(self.gap_left())
        try:
            with transaction(conn, immediate=True):
                started = time.perf_counter()
                if self._trimmed_unseen(conn, read_seq):
                    if rewritten is None:
                        raise StalePage
                    self._recheck(table, rewritten, result)
                through = keys[-1][0] if keys else after
                entry = purge.Purge(table, after, through, cutoff, read_seq)
                self._purge(conn, entry, keys, result)
                self._scanned_to = changelog.last_seq(conn)  # our own purge: nothing to watch
        finally:
            self._released_at = time.monotonic()
        result.lock_seconds = time.perf_counter() - started
        self.longest_lock = max(self.longest_lock, result.lock_seconds)
        self.locks.append(result.lock_seconds)
        # The batch size governs the delete's share of the lock, not PostgreSQL's answer time.
        self._adapt(len(keys), result.lock_seconds - result.recheck_seconds)
        return result

    def _recheck(self, table: str, rewritten: Callable[[], list[str]], result: BatchResult) -> None:
        self.rechecks += 1
        asked = time.perf_counter()
        self.note_rewritten(table, rewritten())
        result.recheck_seconds = time.perf_counter() - asked
        self.longest_recheck = max(self.longest_recheck, result.recheck_seconds)

    def _purge(
        self,
        conn: sqlite3.Connection,
        entry: purge.Purge,
        keys: list[tuple[str, int]],
        result: BatchResult,
    ) -> None:
        """Delete the keys not rewritten since the page was read, as one purge entry."""
        wanted = [(pk, size) for pk, size in keys if (entry.table, pk) not in self._recent]
        result.skipped = len(keys) - len(wanted)
        if wanted:
            table = self._tables[entry.table]
            result.rows = purge.purge(conn, table, [pk for pk, _ in wanted], entry)
        planned = sum(size for _, size in wanted)
        # Keys whatsmeow deleted meanwhile are simply not there: bytes scale with what went.
        result.bytes = planned * result.rows // max(len(wanted), 1)

    def checkpoint(self) -> None:
        """Copy the last batch's pages from the WAL into the database (start it right after
        ``delete``), so that whatsmeow's next commit does not find a big WAL to checkpoint
        itself. PASSIVE: nobody waits on it, and it may run while the next ``delete`` does (not
        while another checkpoint does)."""
        conn = self._checkpointer
        if conn is None:
            raise RuntimeError("Pruner.open() first")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def gap_left(self, after: float = 0.0) -> float:
        """Seconds to wait (counting ``after`` more seconds of other work) before the next
        batch may take the write lock."""
        return max(0.0, self._released_at + self.min_gap_seconds - time.monotonic() - after)

    def note_rewritten(self, table: str, keys: list[str]) -> None:
        """Keys PostgreSQL shows as written after the page was read: never delete them."""
        self._recent.update((table, key) for key in keys)

    def _trimmed_unseen(self, conn: sqlite3.Connection, read_seq: int) -> bool:
        """Were entries after ``read_seq`` trimmed (so applied) before this pruner saw them?
        Either way, the rest of the log is scanned (with the write lock held, that is all of
        it) and counts as seen from now on."""
        newest = changelog.last_seq(conn)
        if newest <= self._scanned_to:
            return False
        first = changelog.first_seq_after(conn, self._scanned_to)
        newest_trimmed = newest if first is None else first - 1
        unseen = newest_trimmed > self._scanned_to and newest_trimmed > read_seq
        self._scan(self._scanned_to)
        self._scanned_to = newest
        return unseen

    def _scan(self, after: int) -> None:
        self._recent.update(changelog.upserted_keys(self._connection(), after))

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
