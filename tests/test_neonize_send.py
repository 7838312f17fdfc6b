"""Sending through a worker: the send/send_result protocol, how failures are placed, and the
real neonize client (no internet here) up to its real failure when not connected."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import new_store
from wapool.supervisor import protocol
from wapool.supervisor.workers import WorkerPool
from wapool.whatsapp import events as ev
from wapool.whatsapp.sending import Outcome, SendCommand, SendResult, classify

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"v": 1, "type": "send", "company": "a", "id": "1", "to": "x"}\n', "'text' missing"),
        (
            b'{"v": 1, "type": "send", "company": "a", "id": "1", "to": "x", "text": "",'
            b' "media": 5}\n',
            "'media' not str",
        ),
        (
            b'{"v": 1, "type": "send_result", "company": "a", "id": "1", "outcome": "maybe"}\n',
            "'outcome' is not one of",
        ),
        (
            b'{"v": 1, "type": "send_result", "company": "a", "id": "1", "outcome": "sent",'
            b' "reason": []}\n',
            "'reason' not str",
        ),
    ],
)
def test_malformed_send_messages_are_rejected(line: bytes, error: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=error):
        protocol.decode(line)


def test_send_round_trips_with_media_beyond_the_event_line_limit() -> None:
    command = SendCommand("m1", "1@s.whatsapp.net", "cap", "3EB0AA", bytes(100_000), "image/png",
                          "p.png")  # fmt: skip
    line = protocol.encode_send("acme", command)
    assert len(line) > protocol.MAX_LINE
    with pytest.raises(protocol.ProtocolError, match="longer than"):
        protocol.decode(line)
    kind, fields = protocol.decode(line, protocol.MAX_COMMAND_LINE)
    assert (kind, protocol.decode_send(fields)) == ("send", command)
    result = SendResult("m1", Outcome.SENT, "3EB0BB")
    kind, fields = protocol.decode(protocol.encode_send_result("acme", result))
    assert protocol.decode_send_result(fields) == result
    bad = protocol.encode("send", company="a", id="1", to="x", text="", media="%%%")
    with pytest.raises(protocol.ProtocolError, match="base64"):
        protocol.decode_send(protocol.decode(bad)[1])


@pytest.mark.parametrize(
    ("text", "outcome", "reason"),
    [
        ("SendMessage: client is nil", Outcome.NOT_SENT, "not_connected"),
        (
            "failed to query media connections: websocket not connected",
            Outcome.NOT_SENT,
            "not_connected",
        ),
        ("the store doesn't contain a device JID", Outcome.NOT_SENT, "not_paired"),
        ("server returned error 429: rate-overlimit", Outcome.FAILED, "rate_overlimit"),
        ("the recipient is not on WhatsApp", Outcome.FAILED, "not_on_whatsapp"),
        ("account banned", Outcome.FAILED, "banned"),
        ("timed out waiting for message send response", Outcome.UNCERTAIN, "send error"),
        ("something nobody has seen", Outcome.UNCERTAIN, "send error"),
    ],
)
def test_failures_are_placed(text: str, outcome: Outcome, reason: str) -> None:
    failure = classify(text)
    assert failure.outcome is outcome
    assert failure.reason.startswith(reason)


async def test_real_neonize_worker_answers_not_sent_while_not_connected(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    """A real neonize client in a real worker: its connect fails at DNS (no internet), and a
    send then fails at once, before anything could leave: the message stays queued."""
    store = new_store(whatsmeow_template, tmp_path, "acme")
    results: asyncio.Queue[SendResult] = asyncio.Queue()
    failed = asyncio.Event()

    def on_event(_company: str, event: ev.WhatsAppEvent) -> None:
        if isinstance(event, ev.ConnectFailed):
            failed.set()

    pool = WorkerPool("neonize", 2, on_event, lambda _c, _r: None)
    pool.on_send_result = lambda _company, result: results.put_nowait(result)
    try:
        await pool.start_company("acme", store)
        await asyncio.wait_for(failed.wait(), 60)
        commands = [
            SendCommand("t1", "491701234567@s.whatsapp.net", "hello"),
            SendCommand("g1", "120363000000000000@g.us", "hi group", reply_to="3EB0AA"),
            SendCommand(
                "d1",
                "120363000000000000@g.us",
                "",
                media=b"a document",
                mimetype="text/plain",
                filename="a.txt",
            ),
            SendCommand(
                "i1", "120363000000000000@g.us", "", media=b"not an image", mimetype="image/png"
            ),
        ]
        for command in commands:
            assert await pool.send("acme", command)
        answers = {}
        for _ in commands:
            result = await asyncio.wait_for(results.get(), 30)
            answers[result.id] = result
        for key in ("t1", "g1", "d1"):
            assert answers[key].outcome is Outcome.NOT_SENT, answers[key]
            assert answers[key].reason
            assert answers[key].reason.startswith("not_")
        assert answers["i1"].outcome is Outcome.FAILED  # bytes that are no image: never sent
        assert (answers["i1"].reason or "").startswith("media")
        assert not await pool.send("nobody", commands[0])  # no worker: certainly not sent
    finally:
        await pool.close()


@pytest.mark.process  # loading neonize runs ldconfig (python-magic looks for libmagic)
def test_real_neonize_mark_read_fails_clearly_while_not_connected(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    from wapool.whatsapp.neonize_adapter import NeonizeBackend

    store = new_store(whatsmeow_template, tmp_path, "acme")
    client = NeonizeBackend().client("acme", store, lambda _event: None)
    with pytest.raises(Exception, match=r"(?i)client is nil|not connected|device"):
        client.mark_read("491701234567@s.whatsapp.net", "491701234567@s.whatsapp.net", ["3EB0AA"])
    assert client.stop(5)
