"""The nodes table and graceful handoffs in PostgreSQL: registration and heartbeats, the view a
daemon balances on, a lease handed over with its sequence (reserved for a node during one lease
length), and the operator commands ``wapool nodes``, ``drain`` and ``move``."""

from __future__ import annotations

import random
from pathlib import Path

import psycopg
import pytest

from tests.conftest import (
    make_settings,
    mirror_once,
    new_store,
    proxied,
    run_cli,
    wait_until_up,
)
from tests.test_mirror import add_companies
from wapool.db.pool import Database
from wapool.errors import WapoolError
from wapool.handoff import Handoffs, _last_seq
from wapool.leases import Leases
from wapool.nodes import Nodes, list_nodes, request_move, set_draining
from wapool.store.mirror import Mirror
from wapool.store.working_store import connect
from wapool.testing.fault_proxy import FaultProxy
from wapool.testing.whatsmeow_writes import WhatsmeowWriter

pytestmark = pytest.mark.timeout(120)


async def test_a_handed_over_lease_records_the_sequence_and_goes_to_its_node(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    add_companies(database_url, "a", "b")
    path = new_store(whatsmeow_template, tmp_path / "one", "a")
    conn = connect(path)
    WhatsmeowWriter(conn, random.Random(1)).pair()
    conn.close()
    one = Leases(db, "one", seconds=30)
    await one.acquire(["a", "b"])
    await mirror_once(db, "a", path)
    applied = (await db.fetch("SELECT applied_seq FROM store_copies WHERE company_id = 'a'"))[0][0]
    assert applied > 0
    assert await one.hand_over({"a": "two", "b": None}) == {"a": applied, "b": 0}
    assert one.held == {}
    third = Leases(db, "three", seconds=30)
    assert await third.acquire(["a", "b"]) == {"b": 2}  # "a" is reserved for two
    two = Leases(db, "two", seconds=30)
    assert await two.acquire(["a"], reserved_only=True) == {"a": 2}
    assert two.handed_at == {"a": applied}
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT holder, reserved_for, move_to FROM company_leases WHERE company_id = 'a'"
        ).fetchone()
    assert row == ("two", None, None)
    async with db.pool.connection() as conn, conn.transaction():
        assert set(await one.fence().refused(conn, ["a"])) == {"a"}  # the old holder's writes


async def test_a_reservation_lapses_after_a_lease(db: Database, database_url: str) -> None:
    add_companies(database_url, "a")
    one = Leases(db, "one", seconds=30)
    await one.acquire(["a"])
    await one.hand_over({"a": "gone"})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE company_leases SET expires_at = now() - interval '31 seconds'")
    assert await Leases(db, "three", seconds=30).acquire(["a"]) == {"a": 2}


async def test_nodes_register_beat_and_see_each_other(db: Database, database_url: str) -> None:
    add_companies(database_url, *"abcde")
    one, two = Nodes(db, "one", 30, "host-1"), Nodes(db, "two", 30, "host-2")
    await one.register()
    await two.register()
    await Leases(db, "one", 30).acquire("abc")
    released = Leases(db, "two", 30)
    await released.acquire("de")
    await released.hand_over({"e": None})
    await one.beat(3)
    view = await one.view()
    assert view.sharing == {"one", "two"}
    assert (view.draining, view.in_transit, view.holding) == (False, 1, {"one": 3, "two": 1})
    await set_draining(db, "two", True)
    assert (await one.view()).sharing == {"one"}
    assert (await two.view()).draining
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE nodes SET heartbeat_at = now() - interval '31 seconds' "
                     "WHERE name = 'one'")  # fmt: skip
    rows = {r.name: r for r in await list_nodes(db, 30)}
    assert (rows["one"].live, rows["one"].companies, rows["one"].address) == (False, 3, "host-1")
    assert rows["two"].draining
    await two.register()  # a daemon that starts takes its share again
    assert not (await two.view()).draining
    await two.deregister()
    await two.beat(0)  # a heartbeat without a row registers again
    assert {r.name for r in await list_nodes(db, 30)} == {"one", "two"}


async def test_a_move_asks_the_holder_or_reserves_a_free_company(
    db: Database, database_url: str
) -> None:
    add_companies(database_url, "a", "b")
    for name in ("one", "two", "tired"):
        await Nodes(db, name, 30).register()
    await set_draining(db, "tired", True)
    await Leases(db, "one", 30).acquire(["a"])
    with pytest.raises(WapoolError, match="no node named 'nope'"):
        await request_move(db, "a", "nope", 30)
    with pytest.raises(WapoolError, match="'tired' is draining"):
        await request_move(db, "a", "tired", 30)
    assert await request_move(db, "a", "one", 30) == "a is already driven by one"
    assert await request_move(db, "a", "two", 30) == "a: asked one to hand it over to two"
    assert (await Nodes(db, "one", 30).view()).moves == {"a": "two"}
    assert await request_move(db, "b", "two", 30) == "b is driven by no node: reserved for two"
    assert await Leases(db, "one", 30).acquire(["b"]) == {}
    assert await Leases(db, "two", 30).acquire(["b"], reserved_only=True) == {"b": 1}


def test_operator_commands(database_url: str, tmp_path: Path) -> None:
    add_companies(database_url, "a")
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path)}
    empty = run_cli("nodes", env=env, cwd=tmp_path)
    assert (empty.returncode, empty.stdout.splitlines()[-1]) == (0, "(no node registered)")
    unknown = run_cli("drain", "ghost", env=env, cwd=tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr == "wapool: error: no node named 'ghost' (see `wapool nodes`)\n"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO nodes (name, address, version) VALUES ('n1', 'h http=x', '1')")
    drained = run_cli("drain", "n1", "--wait", "--timeout", "5", env=env, cwd=tmp_path)
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.splitlines()[-1] == "n1 drives no company"
    listing = run_cli("nodes", env=env, cwd=tmp_path).stdout.splitlines()
    assert listing[0].split() == ["NODE", "ADDRESS", "COMPANIES", "HEARTBEAT", "VERSION", "STATE"]
    assert listing[1].split()[0] == "n1"
    assert listing[1].split()[-1] == "draining"
    moved = run_cli("move", "nope", "n1", env=env, cwd=tmp_path)
    assert moved.returncode != 0
    assert moved.stderr.count("\n") == 1
    assert "nope" in moved.stderr


class Stops:
    """What a handoff asks of the supervisor: stop these clients (recorded)."""

    def __init__(self) -> None:
        self.stops: list[str] = []
        self.pool = self

    async def stop(self, company: str) -> None:
        self.stops.append(company)

    async def stopped(self, _company: str, _timeout: float) -> bool:
        return True


async def test_a_handoff_cut_by_an_outage_keeps_the_lease_then_completes(
    database_url: str, proxy: FaultProxy, whatsmeow_template: Path, tmp_path: Path
) -> None:
    """Stopped, not released while PostgreSQL is away (driven by nobody, never by two); the
    next round drains what was left and releases at the store's own sequence."""
    add_companies(database_url, "a")
    settings = make_settings(proxied(database_url, proxy), tmp_path, db_connect_timeout_seconds=1,
                             db_pool_timeout_seconds=1, db_query_timeout_seconds=2)  # fmt: skip
    db = Database.from_settings(settings)
    await db.open(wait=True)
    path = new_store(whatsmeow_template, tmp_path / "one", "a")
    conn = connect(path)
    writer = WhatsmeowWriter(conn, random.Random(1))
    writer.pair()
    leases = Leases(db, "one", seconds=30)
    await leases.acquire(["a"])
    mirror = Mirror(db, fence=leases.fence())
    mirror.add("a", path)
    stops = Stops()
    handoffs = Handoffs(leases, stops, mirror, tmp_path / "one")  # type: ignore[arg-type]
    try:
        assert await mirror.drain(30)
        for _ in range(20):  # changes the mirror has not seen yet
            writer.random_transaction()
        conn.close()
        await proxy.refuse()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("wapool.handoff.DRAIN_SECONDS", 1.0)
            assert await handoffs.run({"a": None}) == []
        assert stops.stops == ["a"]
        assert handoffs.pending == {"a": None}
        assert "a" in leases.held  # still ours: nobody else may drive it
        await proxy.restore()
        await wait_until_up(db)
        assert await handoffs.run({}) == ["a"]
        with psycopg.connect(database_url) as pg:
            row = pg.execute("SELECT holder, released_seq FROM company_leases").fetchone()
            copy = pg.execute("SELECT applied_seq FROM store_copies").fetchone()
        assert copy is not None
        assert row == ("", copy[0])
        assert copy[0] == _last_seq(path)
        await handoffs.discard_stores(["a"])
        assert not path.exists()
        assert handoffs.stats.handoffs_out == 1
        assert handoffs.stats.handoff_failures == 1
    finally:
        mirror.close()
        await db.close()
