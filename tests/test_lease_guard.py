"""No client without a live lease: the lease's local validity on an injected clock, the start
guard in the supervisor (restarts included), and the batch rule for taking leases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from tests.test_mirror import add_companies
from wapool.bringup import BringUp
from wapool.clock import ManualClock
from wapool.db.health import DatabaseHealth
from wapool.db.pool import Database
from wapool.leases import Leases
from wapool.supervisor.reconciler import Supervisor
from wapool.supervisor.session import State

pytestmark = pytest.mark.timeout(60)


async def test_a_lease_is_live_until_half_of_it_is_left(db: Database, database_url: str) -> None:
    add_companies(database_url, "a")
    clock = ManualClock()
    leases = Leases(db, "me", seconds=30, clock=clock)
    assert not leases.live("a")  # never taken
    await leases.acquire(["a"])
    assert leases.live("a")
    clock.advance(14.9)  # renewal due every 10 s, margin 5 s: 15 s must be left
    assert leases.live("a")
    clock.advance(0.2)
    assert not leases.live("a")  # the renewal is late: no new client on this lease
    assert await leases.renew() == []
    assert leases.live("a")  # valid from the moment the renewal was sent
    await leases.release(["a"])
    assert not leases.live("a")


async def test_a_lost_lease_is_not_live(db: Database, database_url: str) -> None:
    add_companies(database_url, "a")
    clock = ManualClock()
    mine = Leases(db, "me", seconds=30, clock=clock)
    await mine.acquire(["a"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE company_leases SET expires_at = now() - interval '1 second'")
    assert await Leases(db, "other", seconds=30).acquire(["a"]) == {"a": 2}
    assert await mine.renew() == ["a"]
    assert not mine.live("a")
    assert mine.held == {}


async def test_acquire_takes_at_most_the_limit_and_skips_leases_held_elsewhere(
    db: Database, database_url: str
) -> None:
    add_companies(database_url, *"abcdef")
    other = Leases(db, "other", seconds=30)
    assert await other.acquire(["a", "c"]) == {"a": 1, "c": 1}
    mine = Leases(db, "me", seconds=30)
    assert await mine.acquire("abcdef", limit=0) == {}
    assert set(await mine.acquire("abcdef", limit=2)) == {"b", "d"}
    assert set(await mine.acquire("abcdef", limit=5)) == {"e", "f"}
    assert set(mine.held) == {"b", "d", "e", "f"}


async def test_renewal_ignores_a_lease_released_while_it_ran(
    db: Database, database_url: str
) -> None:
    add_companies(database_url, "a", "b")
    leases = Leases(db, "me", seconds=30)
    await leases.acquire(["a", "b"])
    renewal = asyncio.ensure_future(leases.renew())
    await leases.release(["a"])
    assert await renewal == []  # "a" was given back, not lost
    assert set(leases.held) == {"b"}


class Switch:
    """A start guard the test flips by hand; it records the starts it was told about."""

    def __init__(self) -> None:
        self.allow = False
        self.starts: list[str] = []

    def may_start(self, _company: str) -> bool:
        return self.allow

    def started(self, company: str) -> None:
        self.starts.append(company)


async def test_the_supervisor_starts_and_restarts_only_when_the_guard_allows(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    guard = Switch()
    sup = Supervisor("simulated", 2, lambda _c: tmp_path / "x.db", clock=clock, guard=guard)
    try:
        sup.want(["a"])
        await sup.tick()
        assert sup.sessions["a"].state is State.STOPPED
        assert sup.pool.workers == []  # no client, not even a worker
        guard.allow = True
        await sup.tick()
        assert sup.sessions["a"].state is State.STARTING
        assert guard.starts == ["a"]
        guard.allow = False
        sup._on_crash("a", "worker exited with status -9")
        clock.advance(600)  # far past any backoff
        await sup.tick()
        assert sup.sessions["a"].state is State.FAILED  # the restart waits for a live lease
        assert guard.starts == ["a"]
        guard.allow = True
        await sup.tick()
        assert sup.sessions["a"].state is State.STARTING
        assert guard.starts == ["a", "a"]
    finally:
        await sup.close()


class FakeLeases:
    """What ``BringUp`` reads from ``Leases``: the held set and the duration."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.held: dict[str, int] = {}

    def live(self, company: str) -> bool:
        return company in self.held

    def resumable(self, _company: str) -> bool:
        return False  # no start without PostgreSQL here (tests/test_offline_start.py)


def _bringup(seconds: float, first: int) -> tuple[BringUp, FakeLeases, ManualClock]:
    clock = ManualClock()
    leases = FakeLeases(seconds)
    return BringUp(leases, first, clock), leases, clock  # type: ignore[arg-type]


def _take(bringup: BringUp, leases: FakeLeases, companies: list[str]) -> None:
    leases.held.update(dict.fromkeys(companies, 1))
    bringup.taken(companies)


def test_the_first_batch_is_the_connect_limit_then_the_measured_pace() -> None:
    bringup, leases, clock = _bringup(seconds=30, first=8)
    assert bringup.room() == 8
    batch = [f"c{n}" for n in range(8)]
    _take(bringup, leases, batch)
    assert bringup.room() == 0  # eight pending: no more until they come up
    for company in batch:  # one company a second (a slow provisioning)
        clock.advance(1.0)
        bringup.started(company)
    assert bringup.rate == pytest.approx(1.0)
    assert bringup.budget == 15  # what comes up within half a lease
    assert bringup.room() == 15
    batch = [f"d{n}" for n in range(15)]
    _take(bringup, leases, batch)
    clock.advance(1.0)
    for company in batch:  # all in a second this time
        bringup.started(company)
    assert bringup.rate == pytest.approx((1.0 + 15.0) / 2)
    assert bringup.budget == 120


def test_a_slow_pace_takes_one_lease_at_a_time() -> None:
    bringup, leases, clock = _bringup(seconds=6, first=8)
    _take(bringup, leases, ["a", "b"])
    clock.advance(5.0)
    bringup.started("a")
    clock.advance(5.0)
    bringup.started("b")
    assert bringup.rate == pytest.approx(0.2)
    assert bringup.budget == 1


def test_a_stuck_company_stops_counting_after_a_lease() -> None:
    bringup, leases, clock = _bringup(seconds=10, first=2)
    _take(bringup, leases, ["stuck", "ok"])
    clock.advance(1.0)
    bringup.started("ok")
    assert bringup.room() == 1
    clock.advance(9.5)  # "stuck" never starts (its store cannot be provisioned)
    assert bringup.pending() == 0
    assert bringup.rate == pytest.approx(1 / 10.5)  # measured when the batch was a lease old
    assert bringup.room() == bringup.budget == 1


def test_leases_given_back_or_lost_are_no_longer_pending() -> None:
    bringup, leases, clock = _bringup(seconds=10, first=4)
    _take(bringup, leases, ["a", "b", "c"])
    del leases.held["b"]
    clock.advance(2.0)
    bringup.started("a")
    bringup.started("a")  # a restart later does not count twice
    assert bringup.pending() == 1
    del leases.held["c"]
    assert bringup.pending() == 0
    assert bringup.rate == pytest.approx(0.5)  # one started, two seconds after the batch
    assert bringup.may_start("a")
    assert not bringup.may_start("b")


async def test_an_expired_lease_is_taken_over_only_once_seen_expired_for_the_grace(
    db: Database, database_url: str
) -> None:
    """The holder, back from an outage, renews within a third of a lease: it goes first."""
    holder = await _held_then_expired(db, database_url, "1 hour")
    clock = ManualClock()
    taker = Leases(db, "taker", seconds=30, clock=clock, takeover_grace=15)
    assert await taker.acquire(["a"]) == {}  # first seen expired now
    assert taker.ripening == 1
    clock.advance(14)
    assert await taker.acquire(["a"]) == {}
    db.health.mark_down("an outage")  # seen through an outage: start again
    db.health.mark_up()
    clock.advance(5)
    assert await taker.acquire(["a"]) == {}
    assert await holder.renew() == []  # the holder renews an expired lease nobody took
    clock.advance(60)
    assert await taker.acquire(["a"]) == {}
    assert taker.ripening == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE company_leases SET expires_at = now() - interval '1 second'")
    assert await taker.acquire(["a"]) == {}
    clock.advance(15)
    assert await taker.acquire(["a"]) == {"a": 2}


async def test_a_dead_holders_lease_is_taken_over_at_once_when_postgres_was_up_all_along(
    db: Database, database_url: str
) -> None:
    """The holder had every renewal's chance with PostgreSQL up (for us): no grace to wait."""
    await _held_then_expired(db, database_url, "1 second")
    clock = ManualClock()
    db.health = DatabaseHealth(clock)  # up since this clock's start
    taker = Leases(db, "taker", seconds=30, clock=clock, takeover_grace=15)
    clock.advance(30 + 15)  # not yet: the holder's last renewal may predate what we saw
    assert await taker.acquire(["a"]) == {}
    clock.advance(2)
    assert await taker.acquire(["a"]) == {"a": 2}


async def _held_then_expired(db: Database, database_url: str, ago: str) -> Leases:
    """Company ``a``, leased by ``holder``, whose lease expired ``ago`` by PostgreSQL's clock."""
    add_companies(database_url, "a")
    holder = Leases(db, "holder", seconds=30)
    await holder.acquire(["a"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE company_leases SET expires_at = now() - %s::interval", (ago,))
    return holder
