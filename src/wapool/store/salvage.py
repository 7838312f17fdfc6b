"""Reading what a broken working store still holds that PostgreSQL lacks: its change log.

A store is only replaced once what it owes PostgreSQL is saved or named. ``read_salvage`` reads
the change-log entries after the copy's ``applied_seq`` from a damaged file, as far as SQLite
still can: forwards from the start until a damaged page stops it, then backwards from the end
down to that point. What lies between (a sequence range) could not be read; so could a recheck
entry whose row could not be read (named by table and key). ``Salvage.prefixes`` then turns the
entries into ordinary mirror prefixes, coalesced and cut at purges exactly as the mirror does
(``changelog.read_prefix`` on an in-memory copy), so ``pg_copy.apply`` saves them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

from wapool.store import changelog
from wapool.store.capture import CAPTURE_DDL
from wapool.store.faults import SQLITE_ERRORS, StoreFault
from wapool.store.purge import PURGE_TABLE, Purge
from wapool.store.schema import StoreSchema, read_schema
from wapool.store.working_store import get_meta, read_only, set_meta

_ENTRIES = "SELECT seq, tbl, op, pk, img, at FROM wapool_changelog WHERE seq > ? ORDER BY seq"


@dataclass(frozen=True)
class Entry:
    seq: int
    table: str
    op: str
    key: str
    image: str | None
    at: float


@dataclass
class Salvage:
    """What could be read of a store's change log after ``after_seq``, and what could not."""

    after_seq: int
    store_uuid: str | None = None
    schema: StoreSchema | None = None
    entries: list[Entry] = field(default_factory=list)
    #: Sequence ranges (first, last) that could not be read; last None: "and everything after".
    lost: list[tuple[int, int | None]] = field(default_factory=list)
    #: (table, key) of entries whose row image could not be read.
    lost_keys: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def complete(self) -> bool:
        return not self.lost and not self.lost_keys

    @property
    def owed(self) -> bool:
        """Does the store hold anything after ``after_seq``, read or not?"""
        return bool(self.entries) or not self.complete

    def prefixes(self, fingerprint: str) -> Iterator[changelog.Prefix]:
        """The saved entries as mirror prefixes, in order (one unless the cleanup purged)."""
        with closing(sqlite3.connect(":memory:", isolation_level=None)) as mem:
            mem.executescript(CAPTURE_DDL)
            set_meta(mem, "store_uuid", self.store_uuid or "")
            set_meta(mem, "capture_fingerprint", fingerprint)
            mem.executemany(
                "INSERT INTO wapool_changelog (seq, tbl, op, pk, img, at) VALUES (?, ?, ?, ?, ?, ?)",
                ((e.seq, e.table, e.op, e.key, e.image, e.at) for e in self.entries),
            )
            seq = self.after_seq
            while (prefix := changelog.read_prefix(mem, after_seq=seq)) is not None:
                yield prefix
                seq = prefix.high_seq


def read_salvage(path: Path, after_seq: int) -> Salvage:
    """Everything still readable in ``path``'s change log after ``after_seq``."""
    salvage = Salvage(after_seq)
    try:
        conn = read_only(path)
    except StoreFault as exc:
        salvage.lost.append((after_seq + 1, None))
        salvage.error = str(exc)
        return salvage
    with closing(conn):
        with suppress(*SQLITE_ERRORS):
            salvage.store_uuid = get_meta(conn, "store_uuid")
        with suppress(*SQLITE_ERRORS):
            salvage.schema = read_schema(conn)
        _read_log(conn, salvage)
    return salvage


def _read_log(conn: sqlite3.Connection, salvage: Salvage) -> None:
    try:
        logged = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'wapool_changelog'")
        if logged.fetchone() is None:
            return  # never captured: it owes nothing
    except SQLITE_ERRORS as exc:
        salvage.lost.append((salvage.after_seq + 1, None))
        salvage.error = f"{type(exc).__name__}: {exc}"
        return
    forward, error = _scan(conn, _ENTRIES, salvage.after_seq, stop_at=None)
    if error is None:
        _keep(conn, salvage, forward)
        return
    salvage.error = error
    reached = _seq(forward[-1]) if forward else salvage.after_seq
    backward, error = _scan(conn, _ENTRIES.replace("ORDER BY seq", "ORDER BY seq DESC"),
                            salvage.after_seq, stop_at=reached)  # fmt: skip
    if error is not None:  # neither direction got past the damage: a gap
        last_issued: int | None = None
        with suppress(*SQLITE_ERRORS):
            last_issued = changelog.last_seq(conn)
        end = _seq(backward[-1]) - 1 if backward else last_issued
        if end is None or end > reached:
            salvage.lost.append((reached + 1, end))
    _keep(conn, salvage, forward + backward[::-1])


def _scan(
    conn: sqlite3.Connection, query: str, after_seq: int, stop_at: int | None
) -> tuple[list[Entry | int], str | None]:
    """Entries in the query's order until the end, ``stop_at`` or the first damaged page; the
    sequence number alone for an entry whose text is damaged."""
    found: list[Entry | int] = []
    conn.text_factory = bytes  # decoded row by row: one damaged text must not end the scan
    try:
        for seq, table, op, key, image, at in conn.execute(query, (after_seq,)):
            if stop_at is not None and seq <= stop_at:
                break
            try:
                found.append(Entry(int(seq), table.decode(), op.decode(), key.decode(),
                                   None if image is None else image.decode(), float(at)))  # fmt: skip
            except (ValueError, TypeError, AttributeError):
                found.append(int(seq))
    except SQLITE_ERRORS as exc:
        return found, f"{type(exc).__name__}: {exc}"
    finally:
        conn.text_factory = str
    return found, None


def _seq(entry: Entry | int) -> int:
    return entry if isinstance(entry, int) else entry.seq


def _keep(conn: sqlite3.Connection, salvage: Salvage, entries: list[Entry | int]) -> None:
    """Keep the entries whose content is sound; a recheck becomes the row's current state."""
    for entry in entries:
        if isinstance(entry, int):
            salvage.lost.append((entry, entry))
            continue
        try:
            kept = _sound(conn, salvage, entry)
        except (sqlite3.Error, ValueError, KeyError, TypeError):
            kept = None
        if kept is None:
            salvage.lost_keys.append((entry.table, entry.key))
        else:
            salvage.entries.append(kept)


def _sound(conn: sqlite3.Connection, salvage: Salvage, entry: Entry) -> Entry | None:
    """The entry as it can be saved, or None. A damaged page can hold well-formed SQLite and
    garbage text, so what PostgreSQL will be given is parsed first."""
    if entry.table == PURGE_TABLE:
        Purge.decode(entry.image or "")
        return entry
    if entry.op == "R":
        if salvage.schema is None:
            return None
        image = changelog.current_image(conn, salvage.schema, entry.table, entry.key)
        entry = Entry(entry.seq, entry.table, "U" if image else "D", entry.key, image, entry.at)
    json.loads(entry.key)
    if entry.op == "U" and entry.image is not None:
        json.loads(entry.image)
        return entry
    return entry if entry.op == "D" else None
