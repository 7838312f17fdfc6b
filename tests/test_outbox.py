"""The local outbox: durable accepts with idempotency, forward-only statuses, a kill turning
``sending`` into ``uncertain``, and group commit (many accepts, few fsyncs)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from wapool.messaging.group_commit import GroupCommitWriter
from wapool.messaging.outbound import Media, Outbound, Status
from wapool.messaging.outbox import Outbox

pytestmark = pytest.mark.timeout(30)


def _msg(key: str | None = None, company: str = "acme", text: str = "hi") -> Outbound:
    return Outbound(company, "491701234567@s.whatsapp.net", text, idempotency_key=key)


async def test_idempotency_key_returns_the_first_message_across_a_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    first, new = await box.accept(_msg("k1", text="first"))
    assert new
    assert first.status is Status.QUEUED
    again, new = await box.accept(_msg("k1", text="second"))
    assert not new
    assert again.id == first.id
    other, new = await box.accept(_msg("k1", company="other"))  # keys are per company
    assert new
    assert other.id != first.id
    box.close()
    box = Outbox(tmp_path / "outbox.db")
    reopened, new = await box.accept(_msg("k1", text="third"))
    assert not new
    assert reopened.id == first.id
    assert box.payload(first.id) == (None, "first", None)
    assert [r.id for r in box.queued("acme")] == [first.id]
    box.close()


async def test_statuses_move_forward_only(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    rec, _ = await box.accept(_msg())
    assert await box.transition(rec.id, Status.SENT, allowed_from=[Status.QUEUED]) is not None
    assert await box.transition(rec.id, Status.SENT, allowed_from=[Status.QUEUED]) is None
    await box.transition(rec.id, Status.SENT, allowed_from=[Status.SENT], whatsapp_id="WA1")
    read = await box.receipt("acme", "WA1", Status.READ)
    assert read is not None
    assert read.status is Status.READ
    assert await box.receipt("acme", "WA1", Status.DELIVERED) is None  # a late one: ignored
    assert box.get("acme", rec.id).status is Status.READ  # type: ignore[union-attr]
    assert box.get("other", rec.id) is None
    box.close()


async def test_a_kill_while_sending_makes_the_message_uncertain(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    rec, _ = await box.accept(_msg())
    media = Outbound(
        "acme", "1@s.whatsapp.net", "cap", media=Media(b"\x89PNG", "image/png", "a.png")
    )
    kept, _ = await box.accept(media)
    await box.transition(rec.id, Status.SENDING, allowed_from=[Status.QUEUED])
    box._writer.close()  # as a kill would: no clean close of anything else
    box = Outbox(tmp_path / "outbox.db")
    assert box.interrupted == [rec.id]
    again = box.get("acme", rec.id)
    assert again is not None
    assert again.status is Status.UNCERTAIN
    assert again.attempts == 1
    assert "may have been sent" in (again.reason or "")
    assert box.get("acme", kept.id).status is Status.QUEUED  # type: ignore[union-attr]
    assert box.payload(kept.id) == (b"\x89PNG", "cap", "a.png")
    box.close()


async def test_unmirrored_rows_until_their_version_is_mirrored(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    rec, _ = await box.accept(_msg())
    [(row, version, _media)] = box.unmirrored()
    assert row.id == rec.id
    await box.mirrored({rec.id: version})
    assert box.unmirrored() == []
    await box.transition(rec.id, Status.SENDING, allowed_from=[Status.QUEUED])
    assert [r.id for r, _, _ in box.unmirrored()] == [rec.id]
    synced, _ = await box.accept(_msg("from-pg"), synced=True)
    assert synced.id not in [r.id for r, _, _ in box.unmirrored()]
    box.close()


async def test_group_commit_batches_and_isolates_failures(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    writer = GroupCommitWriter(conn)

    def insert(key: str) -> object:
        return lambda c: c.execute("INSERT INTO t VALUES (?)", (key,)).rowcount

    results = await asyncio.gather(
        *(writer.write(insert(f"k{i % 150}")) for i in range(200)), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 50
    assert all(isinstance(f, sqlite3.IntegrityError) for f in failures)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (150,)
    assert writer.commits < 200  # fewer commits than changes: they were grouped
    writer.close()
    with pytest.raises(RuntimeError):
        await writer.write(insert("late"))
