"""Writes whose acknowledgement is recorded: what invariant 7 ("no acknowledged change is
silently dropped") is checked against, in tests and fault drills.

    python -m wapool.testing.acked_writes STORE COUNT SEED

Runs up to COUNT whatsmeow-shaped transactions on the working store STORE (as whatsmeow would,
beside a running client) and prints one JSON line per transaction once its COMMIT returned:
``{"inode": ..., "changes": [[seq, table, op, key, image], ...]}`` — the change-log entries
the transaction wrote, read inside it — or ``{"error": ...}`` for one that failed (not
acknowledged). Only keys no simulated client touches are written (fresh random contacts and
message ids), so the last acknowledged state of each key is what PostgreSQL must end up with.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
from pathlib import Path

from wapool.store import changelog
from wapool.store.faults import SQLITE_ERRORS, StoreFault
from wapool.store.working_store import connect, transaction
from wapool.testing.whatsmeow_writes import WhatsmeowWriter

#: Give up after this many failures in a row (an unreadable or full store stays so for a while).
MAX_FAILURES = 3


class AckingWriter(WhatsmeowWriter):
    """A writer that keeps the change-log entries of its last committed transaction."""

    def __init__(self, conn: sqlite3.Connection, rng: random.Random) -> None:
        super().__init__(conn, rng)
        self.last: list[list[object]] = []

    def _txn(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        with transaction(self.conn, immediate=True):
            before = changelog.last_seq(self.conn)
            for sql, params in statements:
                self.conn.execute(sql, params)
            rows = self.conn.execute(
                "SELECT seq, tbl, op, pk, img FROM wapool_changelog WHERE seq > ? ORDER BY seq",
                (before,),
            ).fetchall()
        self.last = [list(row) for row in rows]

    def acked_transaction(self) -> None:
        """One transaction touching only keys of its own."""
        self.rng.choice([self.session, self.identity, self.sender_key, self.message_secret,
                         self.contact, self.app_state_sync_key])()  # fmt: skip


def main(argv: list[str]) -> int:
    store, count, seed = Path(argv[0]), int(argv[1]), int(argv[2])
    try:
        conn = connect(store)
        inode = os.stat(store).st_ino
        writer = AckingWriter(conn, random.Random(seed))
        row = conn.execute("SELECT jid FROM whatsmeow_device LIMIT 1").fetchone()
    except (*SQLITE_ERRORS, StoreFault, OSError) as exc:
        _print({"error": f"{type(exc).__name__}: {exc}"})
        return 0
    if row is None:
        _print({"error": "the store holds no device yet"})
        return 0
    writer.jid = str(row[0])
    failures = 0
    for _ in range(count):
        try:
            writer.acked_transaction()
        except (*SQLITE_ERRORS, StoreFault, OSError) as exc:
            _print({"error": f"{type(exc).__name__}: {exc}"})
            failures += 1
            if failures >= MAX_FAILURES:
                break
            continue
        failures = 0
        _print({"inode": inode, "changes": writer.last})
    conn.close()
    return 0


def _print(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
