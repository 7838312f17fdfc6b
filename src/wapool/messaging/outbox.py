"""The daemon's durable local outbox: ``$WAPOOL_STATE_DIR/outbox.db`` (SQLite, WAL, fsync).

It is the truth about every outbound message this daemon accepted or took over; PostgreSQL's
``outbound_messages`` is its mirror (``outbound_pg``), so accepting and sending go on while
PostgreSQL is down. One file for all the daemon's companies rather than one per company: one
writer thread (``group_commit``) commits whatever is pending with one fsync, however many
companies the batch touches, which is what keeps an accept fast at hundreds of requests a
second; and the file lives beside, not inside, the company directories that a store restore
may rebuild. Rows carry their company; a company that leaves is handed over through
PostgreSQL, and its rows stay here for status look-ups and idempotency.

Changes are serialised through the writer; reads use their own connection on the caller's
thread (WAL: they never wait for the writer). Every change bumps the row's ``version``; the
mirror copies rows whose ``version`` is ahead of ``pg_version``.

One module because the file's schema, its changes and its reads are one contract (statuses only
move forward, receipts that come early wait here): split, the rules would be read apart.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wapool.messaging.group_commit import GroupCommitWriter
from wapool.messaging.outbound import FINAL, PROGRESS, Outbound, Record, Status

OUTBOX_FILE = "outbox.db"
#: Seconds a receipt for an unknown WhatsApp id is kept (its send may not be recorded yet).
EARLY_KEEP = 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    company        TEXT NOT NULL,
    idem_key       TEXT,
    to_jid         TEXT NOT NULL,
    body           TEXT NOT NULL DEFAULT '',
    reply_to       TEXT,
    media          BLOB,
    media_mimetype TEXT,
    media_filename TEXT,
    expires_at     REAL,
    status         TEXT NOT NULL,
    reason         TEXT,
    wa_id          TEXT,
    origin         TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    version        INTEGER NOT NULL DEFAULT 1,
    pg_version     INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_idem ON outbox (company, idem_key)
    WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_queued ON outbox (company, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS outbox_open ON outbox (status, company)
    WHERE status IN ('queued', 'sending', 'uncertain');
CREATE INDEX IF NOT EXISTS outbox_unmirrored ON outbox (seq) WHERE version > pg_version;
CREATE INDEX IF NOT EXISTS outbox_wa ON outbox (company, wa_id) WHERE wa_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS early_receipts (
    company TEXT NOT NULL,
    wa_id   TEXT NOT NULL,
    status  TEXT NOT NULL,
    at      REAL NOT NULL,
    PRIMARY KEY (company, wa_id, status)
);
"""

_COLUMNS = (
    "id, company, seq, to_jid, body, status, created_at, updated_at, idem_key, reply_to, "
    "media_mimetype, media_filename, expires_at, reason, wa_id, origin, attempts"
)


def _record(row: tuple[Any, ...]) -> Record:
    return Record(
        id=row[0], company=row[1], seq=row[2], to=row[3], text=row[4], status=Status(row[5]),
        created_at=row[6], updated_at=row[7], idempotency_key=row[8], reply_to=row[9],
        media_mimetype=row[10], media_filename=row[11], expires_at=row[12], reason=row[13],
        whatsapp_id=row[14], origin=row[15], attempts=row[16],
    )  # fmt: skip


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")  # an accepted message survives a power cut
    return conn


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.exists()
        self._write_conn = _open(path)
        if fresh:
            path.chmod(0o600)
        self._write_conn.executescript(SCHEMA)
        self._read = _open(path)
        self._writer = GroupCommitWriter(self._write_conn, name="outbox-writer")
        #: Messages found ``sending`` when the outbox was opened (a kill interrupted them).
        self.interrupted = self._interrupted_sends()

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> Outbox:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(state_dir / OUTBOX_FILE)

    def close(self) -> None:
        self._writer.close()
        self._write_conn.close()
        self._read.close()

    @property
    def commits(self) -> int:
        return self._writer.commits

    def _interrupted_sends(self) -> list[str]:
        """Make every ``sending`` message ``uncertain``: its send may have left before we died."""
        now = time.time()
        conn = self._write_conn
        conn.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in conn.execute("SELECT id FROM outbox WHERE status = 'sending'")]
        conn.execute(
            "UPDATE outbox SET status = 'uncertain', updated_at = ?, version = version + 1, "
            "reason = 'interrupted while sending: it may have been sent; not repeated unless "
            "asked (POST .../retry)' WHERE status = 'sending'",
            (now,),
        )
        conn.execute("COMMIT")
        return ids

    # -- changes (durable when the await returns) -----------------------------------------------

    async def accept(
        self,
        message: Outbound,
        *,
        status: Status = Status.QUEUED,
        synced: bool = False,
        reason: str | None = None,
        whatsapp_id: str | None = None,
    ) -> tuple[Record, bool]:
        """Store ``message`` unless its idempotency key (or id) is known: then the first one.

        Returns (the stored message, whether it is new). ``synced``: it came from PostgreSQL
        as it is (nothing to mirror back)."""
        extra = (reason, whatsapp_id)
        return await self._writer.write(lambda c: _accept(c, message, status, synced, extra))

    async def transition(
        self,
        message_id: str,
        to: Status,
        *,
        allowed_from: Iterable[Status],
        reason: str | None = None,
        whatsapp_id: str | None = None,
    ) -> Record | None:
        """Move a message to ``to`` if it is in one of ``allowed_from``; None if it was not."""
        sources = tuple(s.value for s in allowed_from)

        def change(conn: sqlite3.Connection) -> Record | None:
            marks = ",".join("?" * len(sources))
            cur = conn.execute(
                f"UPDATE outbox SET status = ?, reason = coalesce(?, reason), "
                f"wa_id = coalesce(?, wa_id), updated_at = ?, version = version + 1, "
                f"attempts = attempts + (? = 'sending') "
                f"WHERE id = ? AND status IN ({marks})",
                (to.value, reason, whatsapp_id, time.time(), to.value, message_id, *sources),
            )
            if not cur.rowcount:
                return None
            if to is Status.SENT and whatsapp_id is not None:
                _apply_early(conn, message_id, whatsapp_id)
            return _get(conn, message_id)

        return await self._writer.write(change)

    async def receipt(self, company: str, whatsapp_id: str, to: Status) -> Record | None:
        """A delivery or read receipt: move the message forward (never back). One for a
        message whose send is not recorded yet is kept and applied when it is."""

        def change(conn: sqlite3.Connection) -> Record | None:
            known = conn.execute(
                "SELECT 1 FROM outbox WHERE company = ? AND wa_id = ?", (company, whatsapp_id)
            ).fetchone()
            if known is None:
                now = time.time()
                conn.execute("DELETE FROM early_receipts WHERE at < ?", (now - EARLY_KEEP,))
                conn.execute("INSERT OR IGNORE INTO early_receipts VALUES (?, ?, ?, ?)",
                             (company, whatsapp_id, to.value, now))  # fmt: skip
                return None
            return _advance(conn, company, whatsapp_id, to)

        return await self._writer.write(change)

    async def mirrored(self, versions: dict[str, int]) -> None:
        """These rows reached PostgreSQL at these versions."""

        def change(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET pg_version = max(pg_version, ?) WHERE id = ?",
                [(v, k) for k, v in versions.items()],
            )

        await self._writer.write(change)

    async def prune(self, older_than: float) -> int:
        """Delete finished messages PostgreSQL has, last changed before ``older_than``."""
        return await self._writer.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM outbox WHERE updated_at < ? AND version <= pg_version AND status "
                    "IN ('sent', 'delivered', 'read', 'failed')",
                    (older_than,),
                ).rowcount
            )
        )

    async def forget(self, ids: list[str]) -> None:
        """These messages were handed to another daemon: they leave this outbox."""
        await self._writer.write(
            lambda conn: conn.executemany(
                "DELETE FROM outbox WHERE id = ? AND status = 'queued'", [(i,) for i in ids]
            )
        )

    # -- reads -----------------------------------------------------------------------------------

    def get(self, company: str, message_id: str) -> Record | None:
        rec = _get(self._read, message_id)
        return rec if rec is not None and rec.company == company else None

    def by_key(self, company: str, key: str) -> Record | None:
        row = self._read.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE company = ? AND idem_key = ?", (company, key)
        ).fetchone()
        return _record(row) if row else None

    def queued(self, company: str, limit: int = 100) -> list[Record]:
        rows = self._read.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE company = ? AND status = 'queued' "
            "ORDER BY seq LIMIT ?",
            (company, limit),
        ).fetchall()
        return [_record(r) for r in rows]

    def companies_with_queue(self) -> set[str]:
        rows = self._read.execute("SELECT DISTINCT company FROM outbox WHERE status = 'queued'")
        return {str(r[0]) for r in rows}

    def payload(self, message_id: str) -> tuple[bytes | None, str, str | None]:
        """The body to send: (media bytes, text or caption, file name)."""
        row = self._read.execute(
            "SELECT media, body, media_filename FROM outbox WHERE id = ?", (message_id,)
        ).fetchone()
        if row is None:
            raise LookupError(message_id)
        return row[0], row[1], row[2]

    def unmirrored(self, limit: int = 500) -> list[tuple[Record, int, bytes | None]]:
        rows = self._read.execute(
            f"SELECT {_COLUMNS}, version, media FROM outbox WHERE version > pg_version "
            "ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [(_record(r[:-2]), int(r[-2]), r[-1]) for r in rows]

    def open_counts(self) -> dict[tuple[str, str], int]:
        """(company, status) -> messages still queued or sending, or uncertain (/metrics)."""
        rows = self._read.execute(
            "SELECT company, status, count(*) FROM outbox "
            "WHERE status IN ('queued', 'sending', 'uncertain') GROUP BY 1, 2"
        )
        return {(str(c), str(s)): int(n) for c, s, n in rows}

    def recent(self, company: str, limit: int = 50) -> list[Record]:
        rows = self._read.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE company = ? ORDER BY seq DESC LIMIT ?",
            (company, limit),
        ).fetchall()
        return [_record(r) for r in rows]


def _advance(conn: sqlite3.Connection, company: str, wa_id: str, to: Status) -> Record | None:
    lower = tuple(s.value for s, r in PROGRESS.items() if r < PROGRESS[to])
    marks = ",".join("?" * len(lower))
    row = conn.execute(
        f"UPDATE outbox SET status = ?, updated_at = ?, version = version + 1 "
        f"WHERE company = ? AND wa_id = ? AND status IN ({marks}) RETURNING id",
        (to.value, time.time(), company, wa_id, *lower),
    ).fetchone()
    return _get(conn, row[0]) if row else None


def _apply_early(conn: sqlite3.Connection, message_id: str, wa_id: str) -> None:
    company = conn.execute("SELECT company FROM outbox WHERE id = ?", (message_id,)).fetchone()[0]
    rows = conn.execute(
        "DELETE FROM early_receipts WHERE company = ? AND wa_id = ? RETURNING status",
        (company, wa_id),
    ).fetchall()
    best = max((Status(r[0]) for r in rows), key=lambda s: PROGRESS[s], default=None)
    if best is not None:
        _advance(conn, company, wa_id, best)


def _get(conn: sqlite3.Connection, message_id: str) -> Record | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (message_id,)).fetchone()
    return _record(row) if row else None


def _accept(
    conn: sqlite3.Connection,
    m: Outbound,
    status: Status,
    synced: bool,
    extra: tuple[str | None, str | None] = (None, None),
) -> tuple[Record, bool]:
    now = time.time()
    media = m.media
    cur = conn.execute(
        "INSERT INTO outbox (id, company, idem_key, to_jid, body, reply_to, media, "
        "media_mimetype, media_filename, expires_at, status, origin, created_at, updated_at, "
        "pg_version, reason, wa_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (
            m.id, m.company, m.idempotency_key, m.to, m.text, m.reply_to,
            media.data if media else None, media.mimetype if media else None,
            media.filename if media else None, m.expires_at, status.value, m.origin, now, now,
            1 if synced else 0, *extra,
        ),
    )  # fmt: skip
    if cur.rowcount == 1:  # new: the record is what was written
        return Record(
            m.id, m.company, int(cur.lastrowid or 0), m.to, m.text, status, now, now,
            m.idempotency_key, m.reply_to, media.mimetype if media else None,
            media.filename if media else None, m.expires_at, extra[0], extra[1], m.origin,
        ), True  # fmt: skip
    row = None
    if m.idempotency_key is not None:  # the key was used: the first message
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE company = ? AND idem_key = ?",
            (m.company, m.idempotency_key),
        ).fetchone()
    known = _record(row) if row else _get(conn, m.id)
    if known is None:
        raise sqlite3.IntegrityError("outbox: conflict without a matching message")
    return known, False


__all__ = ["FINAL", "OUTBOX_FILE", "Outbox"]
