"""The webhook dispatcher against a real local HTTP receiver: signed, per-chat order, retries,
dead letters, bad receivers isolated per chat, restarts resume from the saved progress."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.webhook_receiver import Receiver, receiving
from wapool.clock import ManualClock
from wapool.messaging import model, signing
from wapool.messaging.cursors import Cursors
from wapool.messaging.inbox import InboxWriter
from wapool.messaging.webhook import Webhook, WebhookConfig

pytestmark = pytest.mark.timeout(60)
SECRET = b"s3cret"


def text(n: int, chat: str, company: str = "acme") -> model.InboundMessage:
    return model.InboundMessage(
        company=company, message_id=f"M{n}", chat=chat, sender=chat, timestamp=float(n),
        kind="text", text=f"{chat}:{n}",
    )  # fmt: skip


async def until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(hook: Webhook) -> AsyncIterator[Webhook]:
    stop = asyncio.Event()
    task = asyncio.create_task(hook.run(stop))
    try:
        yield hook
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def webhook(receiver: Receiver, cursors: Cursors, **kw: object) -> Webhook:
    config = WebhookConfig(
        receiver.url, SECRET, max_age=float(kw.pop("max_age", 3600)),  # type: ignore[arg-type]
        timeout=float(kw.pop("timeout", 2)),  # type: ignore[arg-type]
        retry_base=float(kw.pop("retry_base", 0.01)), retry_cap=float(kw.pop("retry_cap", 0.05)),  # type: ignore[arg-type]
    )  # fmt: skip
    return Webhook(config, cursors, **kw)  # type: ignore[arg-type]


def per_chat(receiver: Receiver) -> dict[str, list[str]]:
    chats: dict[str, list[str]] = {}
    for _, body in receiver.accepted:
        chats.setdefault(body["chat"], []).append(body["message_id"])
    return chats


async def test_delivers_signed_in_chat_order_and_resumes_after_restart(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    inbox = InboxWriter(tmp_path / "acme" / "inbox.db")
    cursors = Cursors(tmp_path / "messaging.db")
    chats = [f"c{i}@s.whatsapp.net" for i in range(4)]
    async with receiving(SECRET) as receiver:
        for n in range(200):
            inbox.append(text(n, chats[n % 4]))
        hook = webhook(receiver, cursors)
        async with running(hook):
            hook.add("acme", inbox.path)
            await until(lambda: len(receiver.accepted) == 200)
            assert receiver.bad_signatures == 0
            inbox.append(text(500, chats[0]))
            hook.wake("acme")  # what a worker's inbox notice does
            await until(lambda: len(receiver.accepted) == 201)
        for chat, ids in per_chat(receiver).items():
            numbers = [int(i[1:]) for i in ids]
            assert numbers == sorted(numbers), chat
        # A restart reads from the saved progress: nothing is sent again, new events flow.
        inbox.append(text(501, chats[1]))
        again = webhook(receiver, cursors)
        async with running(again):
            again.add("acme", inbox.path)
            await until(lambda: len(receiver.accepted) == 202)
            await asyncio.sleep(0.2)
        assert len(receiver.accepted) == 202
        assert len(receiver.ids()) == 202
        body = receiver.accepted[0][1]
        assert model.from_json(body) == text(0, chats[0])
        assert body["id"] == model.event_id(text(0, chats[0]))
        assert body["received_at"] > 0


async def test_a_bad_chat_delays_only_itself_then_retries_succeed(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    inbox = InboxWriter(tmp_path / "acme" / "inbox.db")
    cursors = Cursors(tmp_path / "messaging.db")
    async with receiving(SECRET) as receiver:
        receiver.misbehave = {"bad500@x": "500", "hang@x": "hang", "close@x": "close"}
        for n, chat in enumerate(["bad500@x", "hang@x", "close@x"] + ["good@x"] * 50):
            inbox.append(text(n, chat))
        hook = webhook(receiver, cursors, timeout=0.5)
        async with running(hook):
            hook.add("acme", inbox.path)
            await until(lambda: len(receiver.accepted) == 50)  # good chat: all of it
            await until(lambda: hook.stats.failed_attempts >= 6)  # the bad ones keep retrying
            assert set(per_chat(receiver)) == {"good@x"}
            receiver.misbehave.clear()  # the receiver is fixed: the retries get through
            await until(lambda: len(receiver.accepted) == 53)
        assert hook.stats.dead_letters == 0


async def test_an_event_older_than_max_age_becomes_a_dead_letter(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    clock = ManualClock()
    inbox = InboxWriter(tmp_path / "acme" / "inbox.db", clock=clock.time)
    cursors = Cursors(tmp_path / "messaging.db")

    async def travel(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    async with receiving(SECRET) as receiver:
        receiver.misbehave = {"dead@x": "500"}
        inbox.append(text(1, "dead@x"))
        inbox.append(text(2, "dead@x"))
        inbox.append(text(3, "fine@x"))
        hook = webhook(
            receiver, cursors, max_age=600, retry_base=1, retry_cap=60, clock=clock, sleep=travel
        )
        async with running(hook):
            hook.add("acme", inbox.path)
            await until(lambda: hook.stats.dead_letters == 2 and len(receiver.accepted) == 1)
        assert clock.time() - 1_790_000_000.0 > 600 - 60  # it retried until the next wait ran past
    letters = cursors.dead_letters("acme")
    assert sorted(d.seq for d in letters) == [1, 2]
    assert all(d.reason == "HTTP 500" and d.attempts > 1 for d in letters)
    assert cursors.dead_letter_counts() == {"acme": 2}
    assert cursors.get("acme", "webhook", _identity(inbox)) == 3  # dead ones are finished too


def _identity(inbox: InboxWriter) -> str:
    from wapool.messaging.inbox import InboxReader

    return InboxReader(inbox.path).identity()


def test_signature_is_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    sig = signing.sign(b"k", 1700000000, b'{"a":1}')
    assert sig == "sha256=" + hmac.new(b"k", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert signing.verify(b"k", "1700000000", b'{"a":1}', sig)
    assert not signing.verify(b"k", "1700000001", b'{"a":1}', sig)
    assert not signing.verify(b"other", "1700000000", b'{"a":1}', sig)
    assert not signing.verify(b"k", "nope", b'{"a":1}', sig)
