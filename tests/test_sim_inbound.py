"""Inbound messages through the simulated WhatsApp server: queued per device, pushed to the live
client (or when it connects), written to the inbox before the server hears ``received``, pushed
again to the next connection until then."""

from __future__ import annotations

import json
import queue
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.simserver import running_sim_server
from tests.test_sim_server import _paired_store
from wapool.messaging.inbox import InboxReader, InboxWriter
from wapool.messaging.model import InboundMessage
from wapool.whatsapp import events as ev
from wapool.whatsapp.port import ClientEvent
from wapool.whatsapp.simulated import Script, ServerLink, SimulatedBackend

pytestmark = [pytest.mark.timeout(60), pytest.mark.process]


def deliver(path: Path, device: str, chat: str, text: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(json.dumps({"op": "deliver", "device": device, "chat": chat,
                                 "text": text}).encode() + b"\n")  # fmt: skip
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
    assert reply["op"] == "queued", reply
    return str(reply["id"])


def test_server_messages_reach_the_inbox_and_are_acknowledged(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    store, jid = _paired_store(whatsmeow_template, tmp_path, "acme")
    inbox = InboxWriter(tmp_path / "inbox.db")
    seen: queue.Queue[ClientEvent] = queue.Queue()

    def emit(event: ClientEvent) -> None:  # what the worker does: durable, then return
        if isinstance(event, InboundMessage):
            inbox.append(event)
        seen.put(event)

    with running_sim_server(tmp_path) as server:
        early = deliver(server.socket, jid, "5511@s.whatsapp.net", "before you connected")
        assert server.stats()["inbound"][jid] == {"queued": 1, "acked": 0, "pending": 1}
        client = SimulatedBackend(Script(churn_per_second=0), ServerLink(server.socket, "a"))
        sim = client.client("acme", store, emit)
        sim.start()
        got = [seen.get(timeout=10) for _ in range(2)]
        assert ev.Connected() in got
        late = deliver(server.socket, jid, "5511@s.whatsapp.net", "while connected")
        message = seen.get(timeout=10)
        assert isinstance(message, InboundMessage)
        assert message.text == "while connected"
        deadline = time.monotonic() + 10  # the receipt follows the handler's return
        while server.stats()["inbound"][jid]["acked"] < 2:
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.02)
        assert sim.stop(5)
        assert server.stats()["inbound"][jid] == {"queued": 2, "acked": 2, "pending": 0}
        acked = [r["id"] for r in server.records("inbound_acked")]
        assert acked == [early, late]
    reader = InboxReader(tmp_path / "inbox.db")
    assert [e.event.message_id for e in reader.messages_after(0)] == [early, late]  # type: ignore[union-attr]


def test_an_unacknowledged_message_is_pushed_again(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    store, jid = _paired_store(whatsmeow_template, tmp_path, "acme")
    received: queue.Queue[InboundMessage] = queue.Queue()

    def crash(event: ClientEvent) -> None:  # the handler dies before the message is durable
        if isinstance(event, InboundMessage):
            received.put(event)
            raise RuntimeError("killed before the inbox write")

    def keep(event: ClientEvent) -> None:
        if isinstance(event, InboundMessage):
            received.put(event)

    with running_sim_server(tmp_path) as server:
        backend = SimulatedBackend(Script(churn_per_second=0), ServerLink(server.socket, "a"))
        first = backend.client("acme", store, crash)
        first.start()
        sent = deliver(server.socket, jid, "5511@s.whatsapp.net", "hello")
        assert received.get(timeout=10).message_id == sent
        first.stop(5)
        assert server.stats()["inbound"][jid]["pending"] == 1
        second = backend.client("acme", store, keep)
        second.start()
        assert received.get(timeout=10).message_id == sent  # WhatsApp's redelivery
        deadline = time.monotonic() + 10
        while server.stats()["inbound"][jid]["acked"] < 1:
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.02)
        second.stop(5)
        assert server.stats()["inbound"][jid] == {"queued": 1, "acked": 1, "pending": 0}
