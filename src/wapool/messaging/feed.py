"""One read of each inbox for all the main process's consumers: the newest events kept in memory.

Three consumers follow every company's inbox — the webhook, the PostgreSQL mirror
(``inbound_mirror``) and the outbound receipts — each at its own pace and with its own cursor.
Each used to query the inbox itself at every notice (up to three queries each); at a thousand
messages a second over a hundred companies those queries, and the thread hops around them,
took a large share of the daemon's CPU. The feed reads what is new once per notice and keeps
the newest ``keep`` events of each inbox in memory; a consumer asking for events after its
position gets them from there, or, when it is further behind (a receiver or PostgreSQL outage, a
restart), straight from the inbox as before. Positions, cursors and acknowledgements stay the
consumers' own: the feed only changes where the rows are read from.

``touch`` (a worker's notice) marks an inbox as possibly advanced; the next ``read`` of it reads
the new rows. ``read`` and ``identity`` block (SQLite): call them in a worker thread.
"""

from __future__ import annotations

import bisect
import contextlib
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from wapool.messaging.inbox import InboxReader
from wapool.messaging.model import Envelope

#: Events kept per inbox, at least (at most twice as many): what separates the consumers in
#: normal running is a mirror tick or two. Few, so that a hundred companies' worth stays small
#: for the garbage collector (every parsed event is a dict it scans).
KEEP = 256


@dataclass
class _Inbox:
    reader: InboxReader
    identity: str
    #: Every event with base < seq <= head is in ``rows`` (seq order; seqs have gaps).
    base: int
    head: int
    rows: list[Envelope] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    dirty: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class InboxFeed:
    def __init__(self, keep: int = KEEP) -> None:
        self._keep = keep
        self._inboxes: dict[str, _Inbox] = {}
        self._opening = threading.Lock()

    def touch(self, company: str) -> None:
        """The company's inbox may hold new events (a worker's notice)."""
        inbox = self._inboxes.get(company)
        if inbox is not None:
            inbox.dirty = True

    def __contains__(self, company: object) -> bool:
        """Is the company's inbox open here?"""
        return company in self._inboxes

    def identity(self, company: str, path: Path) -> str:
        return self._open(company, path).identity

    def read(
        self, company: str, path: Path, after: int, limit: int, kind: str | None = None
    ) -> tuple[list[Envelope], int]:
        """Events with ``seq > after`` (of ``kind``, if given), at most ``limit``, in order;
        and the seq up to which every event was looked at (the last one returned when the
        limit was reached): a cursor may move there."""
        inbox = self._open(company, path)
        try:
            with inbox.lock:
                if inbox.dirty:
                    self._refresh(inbox)
                head = inbox.head
                if after >= inbox.base:
                    rows = _pick(inbox.rows, bisect.bisect_right(inbox.seqs, after), limit, kind)
                else:  # further behind than the memory: from the inbox, as before the feed
                    rows = inbox.reader.events_between(after, head, limit, kind)
        except (sqlite3.Error, OSError):
            self.forget(company)
            raise
        return rows, (rows[-1].seq if len(rows) >= limit else head)

    def forget(self, company: str) -> None:
        """Close the company's inbox (it is opened again at the next read)."""
        with self._opening:
            inbox = self._inboxes.pop(company, None)
        if inbox is not None:
            with contextlib.suppress(sqlite3.Error):
                inbox.reader.close()

    def close(self) -> None:
        for company in list(self._inboxes):
            self.forget(company)

    def _open(self, company: str, path: Path) -> _Inbox:
        with self._opening:
            inbox = self._inboxes.get(company)
            if inbox is None:
                reader = InboxReader(path)
                try:
                    high = reader.high_seq()
                    inbox = _Inbox(reader, reader.identity(), high, high)
                except BaseException:
                    reader.close()
                    raise
                self._inboxes[company] = inbox
            return inbox

    def _refresh(self, inbox: _Inbox) -> None:
        inbox.dirty = False  # before reading: a notice arriving meanwhile reads again
        new = inbox.reader.events_after(inbox.head, self._keep)
        if len(new) >= self._keep:  # far ahead of everyone: start the memory afresh
            inbox.rows, inbox.seqs = [], []
            inbox.base = inbox.head = inbox.reader.high_seq()
            return
        if not new:
            return
        inbox.rows.extend(new)
        inbox.seqs.extend(e.seq for e in new)
        inbox.head = new[-1].seq
        if len(inbox.rows) > 2 * self._keep:  # trimmed in steps, not at every read
            inbox.base = inbox.seqs[-self._keep - 1]
            del inbox.rows[: -self._keep], inbox.seqs[: -self._keep]


def _pick(rows: list[Envelope], start: int, limit: int, kind: str | None) -> list[Envelope]:
    if kind is None:
        return rows[start : start + limit]
    picked = []
    for envelope in rows[start:]:
        if envelope.type == kind:
            picked.append(envelope)
            if len(picked) >= limit:
                break
    return picked
