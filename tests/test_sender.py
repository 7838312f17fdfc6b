"""The sender on a real outbox, with the worker replaced by a function that answers as a worker
would: order, pacing on a manual clock (waits, never drops), a session that is not connected
keeps its queue until it is or until ``expires_at``, ``not_sent`` goes back to the queue, a dead
worker or a missing answer leaves ``uncertain`` (logged at ERROR, which Sentry turns into an
alert)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from wapool.clock import ManualClock
from wapool.messaging.outbound import Outbound, Status
from wapool.messaging.outbox import Outbox
from wapool.messaging.pacing import Pacer
from wapool.messaging.sender import Sender
from wapool.whatsapp.sending import Outcome, SendCommand, SendResult

pytestmark = pytest.mark.timeout(30)
JID = "491701234567@s.whatsapp.net"


class Worker:
    """Answers sends as a worker would (``answer``: what to say; None: nothing)."""

    def __init__(self) -> None:
        self.sender: Sender | None = None
        self.sent: list[str] = []
        self.answer: Outcome | None = Outcome.SENT
        self.connected = True

    async def deliver(self, company: str, command: SendCommand) -> bool:
        self.sent.append(command.text)
        if self.answer is not None:
            result = SendResult(command.id, self.answer, f"WA{len(self.sent)}", "because")
            assert self.sender is not None
            asyncio.get_running_loop().call_soon(self.sender.on_result, company, result)
        return True


async def _until(check: object, timeout: float = 10) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
def box(tmp_path: Path) -> Outbox:
    outbox = Outbox(tmp_path / "outbox.db")
    yield outbox  # type: ignore[misc]
    outbox.close()


async def test_order_pacing_and_connection(box: Outbox) -> None:
    clock = ManualClock()
    worker = Worker()
    pacer = Pacer(per_minute=60, burst=2, global_per_second=100, clock=clock)
    sender = Sender(box, pacer, worker.deliver, lambda _c: worker.connected, clock=clock)
    worker.sender = sender
    worker.connected = False
    ids = [(await box.accept(Outbound("acme", JID, f"m{n}")))[0].id for n in range(4)]
    sender.drive({"acme"})
    await asyncio.sleep(0.05)
    assert worker.sent == []  # not connected: it keeps its queue
    worker.connected = True
    sender.wake("acme")
    await _until(lambda: len(worker.sent) == 2)  # the burst
    await asyncio.sleep(0.05)
    assert worker.sent == ["m0", "m1"]  # over the limit: it waits
    clock.advance(1.0)  # one token a second
    await _until(lambda: len(worker.sent) == 3)
    clock.advance(1.0)
    await _until(lambda: len(worker.sent) == 4)
    assert worker.sent == ["m0", "m1", "m2", "m3"]  # acceptance order
    await _until(lambda: all(box.get("acme", i).status is Status.SENT for i in ids))  # type: ignore[union-attr]
    assert box.get("acme", ids[0]).whatsapp_id == "WA1"  # type: ignore[union-attr]
    await sender.close(1)


async def test_expiry_not_sent_and_uncertain(box: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    worker = Worker()
    worker.connected = False
    pacer = Pacer(per_minute=6000, burst=100, global_per_second=1000, clock=clock)
    sender = Sender(box, pacer, worker.deliver, lambda _c: worker.connected, clock=clock,
                    result_timeout=0.2)  # fmt: skip
    worker.sender = sender
    late, _ = await box.accept(Outbound("acme", JID, "late", expires_at=clock.time() + 60))
    sender.drive({"acme"})
    clock.advance(61)
    sender.wake("acme")
    await _until(lambda: box.get("acme", late.id).status is Status.FAILED)  # type: ignore[union-attr]
    assert "expired" in (box.get("acme", late.id).reason or "")  # type: ignore[union-attr]
    assert worker.sent == []

    worker.connected = True
    worker.answer = Outcome.NOT_SENT
    again, _ = await box.accept(Outbound("acme", JID, "again"))
    sender.wake("acme")
    await _until(lambda: worker.sent == ["again"])
    await _until(lambda: box.get("acme", again.id).status is Status.QUEUED)  # type: ignore[union-attr]
    worker.answer = None  # the worker never answers: after the timeout, uncertain
    with caplog.at_level(logging.ERROR, logger="wapool.messaging.sender"):
        sender.wake("acme")
        await _until(lambda: box.get("acme", again.id).status is Status.UNCERTAIN)  # type: ignore[union-attr]
    assert any(r.message == "send_uncertain" for r in caplog.records)
    assert "no answer" in (box.get("acme", again.id).reason or "")  # type: ignore[union-attr]

    lost, _ = await box.accept(Outbound("acme", JID, "lost"))
    sender.wake("acme")
    await _until(lambda: worker.sent[-1] == "lost")
    sender.on_worker_lost("acme", "worker exited with status -9")
    await _until(lambda: box.get("acme", lost.id).status is Status.UNCERTAIN)  # type: ignore[union-attr]
    assert "worker died" in (box.get("acme", lost.id).reason or "")  # type: ignore[union-attr]
    assert worker.sent.count("lost") == 1  # never sent again by itself
    await sender.close(1)
