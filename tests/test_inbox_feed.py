"""The inbox feed: what each consumer reads through it is what it would have read from the inbox
itself, at any position, of any kind, with any limit; new rows are read once per notice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from wapool.messaging import model
from wapool.messaging.feed import InboxFeed
from wapool.messaging.inbox import InboxReader, InboxWriter

pytestmark = pytest.mark.timeout(30)


def message(n: int) -> model.InboundMessage:
    chat = "c1@s.whatsapp.net"
    return model.InboundMessage(
        company="acme", message_id=f"M{n}", chat=chat, sender=chat, timestamp=1_700_000_000.5,
        kind="text", text=f"hello {n}",
    )  # fmt: skip


def receipt(n: int) -> model.Receipt:
    return model.Receipt("acme", "c1@s.whatsapp.net", "c1@s.whatsapp.net", "read", (f"X{n}",), 1.0)


def write(inbox: InboxWriter, start: int, count: int) -> None:
    for n in range(start, start + count):
        inbox.append(receipt(n) if n % 3 == 0 else message(n))


def expected(path: Path, after: int, limit: int, kind: str | None) -> tuple[list[int], int]:
    """What a consumer reading the inbox itself gets: the rows, and how far it may move."""
    reader = InboxReader(path)
    try:
        high = reader.high_seq()
        rows = reader.events_between(after, high, limit, kind)
    finally:
        reader.close()
    return [e.seq for e in rows], (rows[-1].seq if len(rows) >= limit else high)


def seqs(read: tuple[list[model.Envelope], int]) -> tuple[list[int], int]:
    return [e.seq for e in read[0]], read[1]


def test_every_position_kind_and_limit_reads_as_the_inbox_does(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    inbox = InboxWriter(path)
    write(inbox, 0, 30)  # before the feed opened: read from the inbox
    feed = InboxFeed(keep=8)
    assert feed.identity("acme", path) == InboxReader(path).identity()
    for round_ in range(4):
        write(inbox, 30 + 7 * round_, 7)  # after: from memory, as far as it keeps
        feed.touch("acme")
        for after in range(0, 60, 3):
            for kind in (None, "message", "receipt"):
                for limit in (1, 4, 100):
                    got = seqs(feed.read("acme", path, after, limit, kind))
                    assert got == expected(path, after, limit, kind), (after, kind, limit)
    rows, _ = feed.read("acme", path, 55, 100)
    assert [r.type for r in rows] == ["message" if r.seq % 3 != 1 else "receipt" for r in rows]


def test_new_rows_are_read_once_per_notice(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    inbox = InboxWriter(path)
    feed = InboxFeed()
    assert feed.read("acme", path, 0, 100) == ([], 0)
    write(inbox, 1, 2)
    assert feed.read("acme", path, 0, 100) == ([], 0)  # no notice yet: nothing new looked at
    feed.touch("acme")
    first = feed.read("acme", path, 0, 100)[0]
    second = feed.read("acme", path, 0, 100)[0]
    assert [e.seq for e in first] == [1, 2]
    assert first[0] is second[0]  # the same rows, read once, for every consumer


def test_a_backlog_beyond_its_memory_is_read_from_the_inbox(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    inbox = InboxWriter(path)
    feed = InboxFeed(keep=5)
    feed.identity("acme", path)
    write(inbox, 0, 40)
    feed.touch("acme")
    assert seqs(feed.read("acme", path, 0, 100)) == expected(path, 0, 100, None)
    assert seqs(feed.read("acme", path, 38, 100)) == ([39, 40], 40)


def test_a_failed_read_reopens_the_inbox(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    write(InboxWriter(path), 0, 3)
    feed = InboxFeed()
    feed.identity("acme", path)
    assert "acme" in feed
    feed._inboxes["acme"].reader.close()  # a broken connection
    with pytest.raises(sqlite3.Error):
        feed.read("acme", path, 0, 10)
    assert "acme" not in feed
    assert seqs(feed.read("acme", path, 0, 10)) == ([1, 2, 3], 3)
