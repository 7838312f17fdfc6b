"""A session whose store failed waits for a repair, never reconnects to the broken store."""

from __future__ import annotations

import random

from wapool.backoff import Backoff
from wapool.clock import ManualClock
from wapool.supervisor import protocol
from wapool.supervisor.session import Session, State
from wapool.whatsapp import events as ev

FAILED = ev.StoreFailed("DatabaseError: database disk image is malformed", "corrupt")


def _connected(clock: ManualClock) -> Session:
    s = Session("962302", Backoff(base=1.0, cap=60.0, rand=random.Random(3).random))
    s.repair_backoff = Backoff(base=1.0, cap=60.0, rand=lambda: 1.0)
    s.start(clock.monotonic())
    s.on_event(ev.Connected(), clock.monotonic())
    return s


def test_a_failed_store_stops_the_session_until_it_is_repaired() -> None:
    clock = ManualClock()
    s = _connected(clock)
    s.on_event(FAILED, clock.monotonic())
    assert s.state is State.STORE_FAILED
    assert s.last_error == "working store corrupt: DatabaseError: database disk image is malformed"
    assert s.repair_due(clock.monotonic())
    assert not s.due(clock.monotonic())
    # Whatever else happens meanwhile, nothing reconnects to the broken store.
    s.on_event(ev.Disconnected("gone"), clock.monotonic())
    s.crashed(clock.monotonic(), "worker exited")
    assert s.state is State.STORE_FAILED
    assert not s.due(clock.monotonic() + 3600)


def test_a_failed_repair_is_retried_with_backoff_then_the_client_restarts() -> None:
    clock = ManualClock()
    s = _connected(clock)
    s.on_event(ev.StoreFailed("OperationalError: database or disk is full", "full"), 0.0)
    s.repairing()
    assert not s.repair_due(clock.monotonic())
    s.repaired(clock.monotonic(), ok=False)
    assert not s.repair_due(clock.monotonic() + 0.5)
    clock.advance(1.0)
    assert s.repair_due(clock.monotonic())
    s.repairing()
    s.repaired(clock.monotonic(), ok=True)
    assert s.due(clock.monotonic())
    s.start(clock.monotonic())
    s.on_event(ev.Connected(), clock.monotonic())
    assert (s.state, s.store_fault) == (State.CONNECTED, None)


def test_a_second_failure_report_is_the_same_episode() -> None:
    clock = ManualClock()
    s = _connected(clock)
    s.on_event(FAILED, clock.monotonic())
    since = s.since
    s.repairing()
    clock.advance(5)
    s.on_event(FAILED, clock.monotonic())
    assert (s.state, s.since, s.repair_at) == (State.STORE_FAILED, since, None)


def test_the_event_crosses_the_worker_protocol() -> None:
    kind, fields = protocol.decode(protocol.encode_event("962302", FAILED))
    assert kind == "event"
    assert protocol.decode_event(fields) == FAILED
