"""Issue 13: two daemons, one cut off from PostgreSQL by the fault proxy while the other
reaches it.

While both reach PostgreSQL no company is ever driven twice (the simulated WhatsApp server
records every overlap). During the partition the cut-off daemon keeps its clients (an outage
alone stops none) until the other takes the expired leases over: WhatsApp then replaces the
older connection — the trade-off docs/several-hosts.md explains. After healing, the cut-off
daemon re-validates its leases, stops those clients at once and keeps its stores aside; no
overlap follows, each company has one holder and ``verify`` finds every copy equal.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import proxied, run_cli
from tests.daemon import Daemons
from tests.fleet import seed_copies
from tests.simserver import running_sim_server
from tests.test_mirror import add_companies
from wapool.store.leftovers import replaced_copies
from wapool.testing.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(300)
COMPANIES = [f"p{n}" for n in range(4)]


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"not reached in {timeout:.0f} s: {what}"
        await asyncio.sleep(0.1)


def _holders(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT company_id, holder FROM company_leases").fetchall())


async def test_a_partitioned_daemon_never_overlaps_once_both_reach_postgres(
    database_url: str, proxy: FaultProxy, whatsmeow_template: Path, tmp_path: Path,
    daemons: Daemons,
) -> None:  # fmt: skip
    add_companies(database_url, *COMPANIES)
    await asyncio.to_thread(asyncio.run, seed_copies(database_url, whatsmeow_template,
                                               tmp_path / "seed", COMPANIES))  # fmt: skip
    with running_sim_server(tmp_path) as server:
        base = {
            "WAPOOL_WHATSAPP_BACKEND": "simulated", "WAPOOL_SIMULATED_SERVER": str(server.socket),
            "WAPOOL_SIMULATED_CHURN_PER_SECOND": "3", "WAPOOL_LEASE_SECONDS": "6",
            "WAPOOL_CACHE_SWEEP_SECONDS": "1", "WAPOOL_DB_QUERY_TIMEOUT_SECONDS": "2",
        }  # fmt: skip
        one = daemons.start(base | {
            "WAPOOL_DATABASE_URL": proxied(database_url, proxy), "WAPOOL_NODE_NAME": "one",
            "WAPOOL_STATE_DIR": str(tmp_path / "one"),
        }, log=tmp_path / "one.log", new_session=True)  # fmt: skip
        live = lambda: server.stats()["live"]  # noqa: E731
        await _until(lambda: len(live()) == len(COMPANIES), 90, "every company up on one")
        two = daemons.start(base | {
            "WAPOOL_DATABASE_URL": database_url, "WAPOOL_NODE_NAME": "two",
            "WAPOOL_STATE_DIR": str(tmp_path / "two"),
        }, log=tmp_path / "two.log", new_session=True)  # fmt: skip
        await two.wait_for_async("event=daemon_ready", 60)
        assert await asyncio.to_thread(lambda: server.stats()["overlaps"]) == []

        await proxy.refuse()  # one is cut off from PostgreSQL; two still reaches it
        await _until(lambda: set(_holders(database_url).values()) == {"two"}, 60,
                     "two took the expired leases over")  # fmt: skip
        await _until(lambda: {c["node"] for c in live().values()} == {"two"}, 30,
                     "WhatsApp holds two's connections")  # fmt: skip
        during = await asyncio.to_thread(lambda: server.stats()["overlaps"])
        assert {(o["old"]["node"], o["new"]["node"]) for o in during} <= {("one", "two")}

        await proxy.restore()  # healed: both reach PostgreSQL again
        for _ in COMPANIES:
            await one.wait_for_async("event=lease_lost", 60)
        await _until(lambda: json.loads(one.get("/status")[1])["companies"] == {}, 30,
                     "one stopped every client")  # fmt: skip
        assert _holders(database_url) == dict.fromkeys(COMPANIES, "two")  # one holder each
        # In a thread: the fault proxy between one and PostgreSQL runs on this event loop.
        assert await asyncio.to_thread(one.stop, signal.SIGTERM, 60) == 0
        assert await asyncio.to_thread(two.stop, signal.SIGTERM, 60) == 0
        after = await asyncio.to_thread(lambda: server.stats()["overlaps"])
    assert after == during  # no overlap once both reach PostgreSQL
    one_text = one.text()
    assert "event=postgres_recovered_after_offline_start" not in one_text  # it never restarted
    assert one_text.count("event=store_set_aside") == len(COMPANIES)
    assert {c.company_id for c in replaced_copies(tmp_path / "one")} == set(COMPANIES)
    for name, expected in (("two", len(COMPANIES)), ("one", 0)):
        env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path / name)}
        result = await asyncio.to_thread(run_cli, "verify", env=env, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(": EQUAL") == expected, result.stdout
        if name == "one":  # what one owed, never applied over two's copies, named by verify
            assert result.stdout.count(": KEPT ASIDE") == len(COMPANIES), result.stdout
