"""Inbox -> inbound_messages in a real PostgreSQL: once per message, NOTIFY on arrival, a
replayed batch changes nothing, a replaced inbox is read from its start, and ``wapool
messages`` shows what arrived."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from wapool.db.pool import Database
from wapool.messaging import model
from wapool.messaging.cursors import Cursors
from wapool.messaging.inbound_mirror import CHANNEL, InboundMirror
from wapool.messaging.inbox import InboxWriter
from wapool.settings import Settings

pytestmark = pytest.mark.timeout(60)


def text(n: int, company: str = "acme") -> model.InboundMessage:
    return model.InboundMessage(
        company=company, message_id=f"M{n}", chat="c@s.whatsapp.net", sender="c@s.whatsapp.net",
        timestamp=1_700_000_000.0 + n, kind="text", text=f"olá {n}", push_name="Ana",
    )  # fmt: skip


def rows(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        got = conn.execute(
            "SELECT company_id, message_id, body FROM inbound_messages ORDER BY id"
        ).fetchall()
    return [(str(c), str(m), str(b)) for c, m, b in got]


async def test_messages_arrive_once_with_a_notice(
    database_url: str, db: Database, settings: Settings, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme')")
    (tmp_path / "acme").mkdir()
    inbox = InboxWriter(tmp_path / "acme" / "inbox.db")
    for n in range(5):
        inbox.append(text(n))
    inbox.append(model.Receipt("acme", "c@s.whatsapp.net", "c@s.whatsapp.net", "read", ("X",), 1.0))
    inbox.append(text(99, company="ghost"))  # no such company: skipped, not a failed batch
    cursors = Cursors(tmp_path / "messaging.db")
    mirror = InboundMirror(db, cursors)
    mirror.add("acme", inbox.path)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")
        assert await mirror.tick() == 6
        notice = await asyncio.wait_for(anext(listener.notifies()), 10)
        assert notice.payload == "acme"
    assert [(c, m) for c, m, _ in rows(database_url)] == [("acme", f"M{n}") for n in range(5)]
    assert mirror.pending == 0
    assert await mirror.tick() == 0
    # Lost cursors (a crash before they were saved) replay the batch: still once each.
    fresh = InboundMirror(db, Cursors(tmp_path / "other.db"))
    fresh.add("acme", inbox.path)
    assert await fresh.tick() == 6
    assert len(rows(database_url)) == 5
    with psycopg.connect(database_url) as conn:
        event = conn.execute(
            "SELECT event FROM inbound_messages WHERE message_id = 'M1'"
        ).fetchone()
    assert event is not None
    assert model.from_json(event[0]) == text(1)

    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(settings.state_dir)}
    shown = run_cli("messages", "acme", "--json", "--limit", "3", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["message_id"] for r in lines] == ["M2", "M3", "M4"]
    assert lines[0]["text"] == "olá 2"
    assert lines[0]["direction"] == "in"
    table = run_cli("messages", "acme", env=env)
    assert table.stdout.split()[:6] == ["TIME", "DIR", "CHAT", "KIND", "STATUS", "TEXT"]
    missing = run_cli("messages", "nobody", env=env)
    assert missing.returncode != 0
    assert "nobody" in missing.stderr


async def test_a_replaced_inbox_is_read_from_its_start(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme')")
    (tmp_path / "acme").mkdir()
    path = tmp_path / "acme" / "inbox.db"
    cursors = Cursors(tmp_path / "messaging.db")
    first = InboxWriter(path)
    for n in range(3):
        first.append(text(n))
    mirror = InboundMirror(db, cursors)
    mirror.add("acme", path)
    assert await mirror.tick() == 3
    first.close()
    mirror.remove("acme")
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    second = InboxWriter(path)
    second.append(text(10))  # seq 1 again, in a new inbox
    again = InboundMirror(db, cursors)
    again.add("acme", path)
    assert await again.tick() == 1
    assert [m for _, m, _ in rows(database_url)] == ["M0", "M1", "M2", "M10"]


async def test_a_backlog_larger_than_a_batch_drains_without_more_notices(
    database_url: str, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wapool.messaging import inbound_mirror

    monkeypatch.setattr(inbound_mirror, "BATCH", 7)
    monkeypatch.setattr(inbound_mirror, "MAX_ROWS_PER_TICK", 10)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme'), ('beta')")
    for company in ("acme", "beta"):
        (tmp_path / company).mkdir()
        inbox = InboxWriter(tmp_path / company / "inbox.db")
        for n in range(30):
            inbox.append(text(n, company=company))
    mirror = InboundMirror(db, Cursors(tmp_path / "messaging.db"))
    mirror.add("acme", tmp_path / "acme" / "inbox.db")
    mirror.add("beta", tmp_path / "beta" / "inbox.db")  # the only notices there will be
    ticks = 0
    while len(rows(database_url)) < 60:
        assert await mirror.tick() <= 14  # bounded per tick: two batches of 7
        ticks += 1
        assert ticks < 20, "the backlog stalled"
    assert await mirror.tick() == 0
    assert mirror.pending == 0
