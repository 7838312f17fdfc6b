"""The local inbox: durable, ordered, one row per WhatsApp message id, readable by kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wapool.messaging import model
from wapool.messaging.inbox import InboxReader, InboxWriter
from wapool.supervisor import protocol

pytestmark = pytest.mark.timeout(30)


def message(n: int, chat: str = "c1@s.whatsapp.net", **extra: object) -> model.InboundMessage:
    return model.InboundMessage(
        company="acme", message_id=f"M{n}", chat=chat, sender=chat, timestamp=1_700_000_000.5,
        kind="text", text=f"hello {n}", **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def receipt(*ids: str) -> model.Receipt:
    return model.Receipt("acme", "c1@s.whatsapp.net", "c1@s.whatsapp.net", "read", ids, 1.0)


def test_json_round_trips_every_field() -> None:
    full = message(
        1, from_me=True, is_group=True, sender_alt="123@lid", push_name="Ana", quoted_id="Q",
        media=model.Media("audio", "audio/ogg", 10, "ab" * 32, "", 7),
        location=model.Location(1.5, -2.5, "here", "street"),
        contacts=(model.Contact("Bo", "BEGIN:VCARD"),), reaction=model.Reaction("M0", "👍"),
    )  # fmt: skip
    for event in (full, receipt("A", "B")):
        data = json.loads(json.dumps(model.to_json(event)))
        assert data["schema"] == model.SCHEMA_VERSION
        assert data["id"] == model.event_id(event)
        assert model.from_json(data) == event


def test_event_ids_are_stable_and_distinct() -> None:
    assert model.event_id(message(1)) == model.event_id(message(1, chat="other@s.whatsapp.net"))
    assert model.event_id(message(1)) != model.event_id(message(2))
    assert model.event_id(receipt("A")) != model.event_id(receipt("B"))
    assert len(model.event_id(message(1))) == 32


@pytest.mark.parametrize(
    "data", [{"type": "nope"}, {"type": "message", "bogus": 1}, {"type": "receipt"}]
)
def test_bad_json_is_a_bad_event(data: dict[str, object]) -> None:
    with pytest.raises(model.BadEvent):
        model.from_json(data)


def test_inbox_orders_dedupes_and_splits_by_kind(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    writer = InboxWriter(path)
    seqs = [writer.append(message(1)), writer.append(receipt("X")), writer.append(message(2))]
    assert seqs == [1, 2, 3]
    assert writer.append(message(1)) is None  # WhatsApp redelivered it
    assert writer.append(receipt("X")) is None
    reader = InboxReader(path)
    assert [e.seq for e in reader.events_after(0)] == [1, 2, 3]
    assert [e.event for e in reader.messages_after(1)] == [message(2)]
    assert [e.event for e in reader.receipts_after(0)] == [receipt("X")]
    assert reader.events_after(3) == []
    assert reader.high_seq() == 3
    assert reader.trim(2, batch=1) == 2
    fourth = writer.append(message(4))
    assert fourth is not None
    assert fourth > 3
    assert [e.seq for e in reader.events_after(0)] == [3, fourth]
    assert path.stat().st_mode & 0o077 == 0
    writer.close()
    reader.close()


def test_a_replaced_inbox_has_another_identity(tmp_path: Path) -> None:
    first = InboxReader(tmp_path / "inbox.db")
    identity = first.identity()
    assert InboxReader(tmp_path / "inbox.db").identity() == identity
    first.close()
    (tmp_path / "inbox.db").unlink()
    assert InboxReader(tmp_path / "inbox.db").identity() != identity


def test_inbox_notice_round_trips() -> None:
    kind, fields = protocol.decode(protocol.encode("inbox", company="acme", seq=9, messages=1))
    assert (kind, fields) == ("inbox", {"company": "acme", "seq": 9, "messages": 1})
