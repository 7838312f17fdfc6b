"""The per-company state machine and the reconnect policy, on a travelled clock."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from wapool.backoff import Backoff
from wapool.clock import ManualClock
from wapool.supervisor.session import TERMINAL, ConnectGate, Session, State
from wapool.whatsapp import events as ev


def _session(seed: int = 1, cap: float = 60.0) -> Session:
    return Session("962302", Backoff(base=1.0, cap=cap, rand=random.Random(seed).random))


def test_pairing_then_connected_then_reconnecting_and_back() -> None:
    clock = ManualClock()
    s = _session()
    s.start(clock.monotonic())
    assert s.state is State.STARTING
    s.on_event(ev.QrCode("2@abc"), clock.monotonic())
    assert s.state is State.PAIRING
    s.on_event(ev.Paired("5511:3@s.whatsapp.net"), clock.monotonic())
    s.on_event(ev.Connected(), clock.monotonic())
    assert (s.state, s.paired_jid) == (State.CONNECTED, "5511:3@s.whatsapp.net")
    s.on_event(ev.MessageReceived(), clock.monotonic())
    s.on_event(ev.MessageReceived(2), clock.monotonic())
    assert (s.state, s.messages) == (State.CONNECTED, 3)  # counted, not a transition
    clock.advance(10)
    s.on_event(ev.Disconnected("network"), clock.monotonic())
    assert s.state is State.RECONNECTING
    assert s.since == clock.monotonic()
    assert s.next_attempt is not None
    assert s.next_attempt <= clock.monotonic() + 1.0
    clock.advance(1.0)
    assert s.due(clock.monotonic())
    s.start(clock.monotonic())
    s.on_event(ev.Connected(), clock.monotonic())
    assert (s.state, s.backoff.failures, s.next_attempt) == (State.CONNECTED, 0, None)


@pytest.mark.parametrize(
    ("event", "state"),
    [
        (ev.LoggedOut("401"), State.LOGGED_OUT),
        (ev.StreamReplaced(), State.STREAM_REPLACED),
        (ev.ClientOutdated(), State.CLIENT_OUTDATED),
    ],
)
def test_terminal_states_never_reconnect(event: ev.WhatsAppEvent, state: State) -> None:
    clock = ManualClock()
    s = _session()
    s.start(clock.monotonic())
    s.on_event(ev.Connected(), clock.monotonic())
    s.on_event(event, clock.monotonic())
    assert s.state is state
    assert state in TERMINAL
    s.on_event(ev.Disconnected("closed"), clock.monotonic())  # the close that follows
    s.crashed(clock.monotonic(), "worker died")
    clock.advance(10_000)
    assert s.state is state
    assert not s.due(clock.monotonic())
    assert s.last_error


def test_temporary_ban_waits_until_it_ends() -> None:
    clock = ManualClock()
    s = _session()
    s.start(clock.monotonic())
    s.on_event(ev.TemporaryBan("101", 3600), clock.monotonic())
    assert s.state is State.BANNED
    clock.advance(3599)
    assert not s.due(clock.monotonic())
    clock.advance(1)
    assert s.due(clock.monotonic())


def test_crash_fails_then_reconnects_with_backoff() -> None:
    clock = ManualClock()
    s = _session(cap=8.0)
    s.start(clock.monotonic())
    s.on_event(ev.Connected(), clock.monotonic())
    delays = []
    for _ in range(6):
        s.crashed(clock.monotonic(), "worker died (exit 134)")
        assert s.state is State.FAILED
        assert s.next_attempt is not None
        delays.append(s.next_attempt - clock.monotonic())
        clock.advance(s.next_attempt - clock.monotonic())
        s.start(clock.monotonic())
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert s.reconnects == 6
    s.stop(clock.monotonic())
    s.crashed(clock.monotonic(), "late")
    assert s.state is State.STOPPED


def test_jitter_spreads_reconnects() -> None:
    firsts = []
    for seed in range(500):
        s = _session(seed)
        s.start(0.0)
        s.on_event(ev.ConnectFailed("no such host"), 0.0)
        assert s.next_attempt is not None
        firsts.append(s.next_attempt)
    assert min(firsts) < 0.05
    assert max(firsts) > 0.95
    assert len({round(f, 2) for f in firsts}) > 80  # spread, not a thundering herd


def test_concurrency_limit_with_200_companies() -> None:
    """A network blip disconnects 200 companies at once: connects in flight stay <= the limit."""
    clock = ManualClock()
    rng = random.Random(42)
    gate = ConnectGate(limit=10)
    sessions = [Session(f"c{i}", Backoff(base=1.0, cap=30.0, rand=rng.random)) for i in range(200)]
    for s in sessions:
        s.start(clock.monotonic())
        s.on_event(ev.Connected(), clock.monotonic())
        s.on_event(ev.Disconnected("blip"), clock.monotonic())
    connecting: dict[str, float] = {}  # company -> when its connect completes
    for _ in range(20_000):
        now = clock.monotonic()
        for s in sessions:
            if s.company_id in connecting and now >= connecting[s.company_id]:
                del connecting[s.company_id]
                s.on_event(ev.Connected(), now)
                gate.release(s.company_id)
            elif s.due(now) and gate.try_acquire(s.company_id):
                s.start(now)
                connecting[s.company_id] = now + 0.5  # a connect takes half a second
        assert gate.in_flight <= 10
        if all(s.state is State.CONNECTED for s in sessions):
            break
        clock.advance(0.05)
    assert all(s.state is State.CONNECTED for s in sessions)
    assert gate.peak == 10
    assert clock.monotonic() - 1000.0 >= 200 * 0.5 / 10  # bounded by the limit, not a storm


async def test_supervisor_reports_transitions_to_the_daemon(tmp_path: Path) -> None:
    from wapool.supervisor.reconciler import Supervisor

    seen: list[tuple[str, State, type]] = []

    async def record(company: str, state: State, event: ev.WhatsAppEvent) -> None:
        seen.append((company, state, type(event)))

    sup = Supervisor("simulated", 2, lambda _c: tmp_path / "x.db", on_transition=record)
    sup.want(["a"])
    sup.sessions["a"].start(0.0)
    sup._on_event("a", ev.Paired("1:2@s.whatsapp.net"))
    sup._on_event("a", ev.Connected())
    sup._on_event("a", ev.MessageReceived())  # no transition: not reported
    sup._on_event("a", ev.LoggedOut("device_removed"))
    sup._on_event("ghost", ev.Connected())  # unknown company: ignored
    await asyncio.sleep(0)
    await asyncio.gather(*sup._background)
    assert sup._reporter is not None
    await sup._reporter
    assert seen == [
        ("a", State.STARTING, ev.Paired),
        ("a", State.CONNECTED, ev.Connected),
        ("a", State.LOGGED_OUT, ev.LoggedOut),
    ]
    await sup.close()
