"""Issue 11's scenario: a daemon brings up many companies slowly, a second daemon starts on the
same database mid-way, and the simulated WhatsApp server counts the companies that ever had two
clients. It must count none: leases are renewed while stores are provisioned, taken in batches
the daemon can bring up, and no client starts without a live lease. And the two end with fair
shares (the second gets its half through graceful handoffs), every store equal to its copy.

The reduced size runs in ``make test``; the issue's full size (200 companies, 30 s leases, the
second daemon 40 s later) runs with ``WAPOOL_SLOW=1``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.fleet import seed_copies
from tests.simserver import SimServerProcess, running_sim_server
from tests.test_mirror import add_companies


@dataclass(frozen=True)
class Scenario:
    companies: int
    lease_seconds: int
    #: Extra seconds each store of the first daemon takes (WAPOOL_SIMULATED_STORE_DELAY_SECONDS).
    slow_store_seconds: float
    #: When the second daemon starts, counted from the first daemon's first lease.
    second_after: float
    timeout: float


REDUCED = Scenario(companies=40, lease_seconds=8, slow_store_seconds=0.6, second_after=10,
                   timeout=240)  # fmt: skip
FULL = Scenario(companies=200, lease_seconds=30, slow_store_seconds=0.0, second_after=40,
                timeout=480)  # fmt: skip


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {timeout:.0f} s: {what}"
        time.sleep(0.1)


def _daemon(
    url: str, state: Path, name: str, server: SimServerProcess, scenario: Scenario, slow: bool
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")} | {
        "WAPOOL_DATABASE_URL": url,
        "WAPOOL_STATE_DIR": str(state),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_SIMULATED_SERVER": str(server.socket),
        "WAPOOL_SIMULATED_CHURN_PER_SECOND": "2",
        "WAPOOL_SIMULATED_STORE_DELAY_SECONDS": str(scenario.slow_store_seconds if slow else 0),
        "WAPOOL_LEASE_SECONDS": str(scenario.lease_seconds),
        "WAPOOL_CACHE_SWEEP_SECONDS": "1",
        "WAPOOL_COMPANIES_PER_WORKER": "10",
        "WAPOOL_NODE_NAME": name,
        "WAPOOL_HTTP_ADDR": "127.0.0.1:0",
    }
    with open(state.parent / f"{name}.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "wapool", "run"], env=env, cwd=state.parent,
                                stdout=subprocess.DEVNULL, stderr=out)  # fmt: skip


def _holders(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT company_id, holder FROM company_leases WHERE holder <> ''")
        return dict(rows.fetchall())


def _run(scenario: Scenario, url: str, template: Path, tmp_path: Path) -> None:
    companies = [f"c{n:03d}" for n in range(scenario.companies)]
    add_companies(url, *companies)
    asyncio.run(seed_copies(url, template, tmp_path / "seed", companies))
    logs = {name: tmp_path / f"{name}.log" for name in ("one", "two")}
    daemons: list[subprocess.Popen[bytes]] = []
    with running_sim_server(tmp_path) as server:
        try:
            daemons.append(_daemon(url, tmp_path / "one", "one", server, scenario, slow=True))
            _wait(lambda: bool(_holders(url)), 60, "the first daemon takes leases")
            first_lease = time.monotonic()
            time.sleep(max(0.0, first_lease + scenario.second_after - time.monotonic()))
            up_before_second = len(server.stats()["live"])
            if scenario.slow_store_seconds:  # slowed down: the second starts mid-bring-up
                assert up_before_second < scenario.companies
            daemons.append(_daemon(url, tmp_path / "two", "two", server, scenario, slow=False))
            _wait(lambda: _shared(server, url, scenario.companies), scenario.timeout,
                  "every company connected, each daemon with its fair share")  # fmt: skip
            _wait(lambda: all(b"event=daemon_ready" in log.read_bytes() for log in logs.values()),
                  scenario.timeout, "both daemons through their first follow")  # fmt: skip
            # Two renewals more: a lease lapsing or a late second client would show now.
            time.sleep(scenario.lease_seconds * 2 / 3)
            stats = server.stats()
            holders = _holders(url)
            for proc in daemons:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(60) for proc in daemons]
        finally:
            for proc in daemons:
                if proc.poll() is None:
                    proc.kill()
        assert server.stop() == 0
        journal_overlaps = server.records("overlap")
    text = {name: log.read_text() for name, log in logs.items()}
    assert stats["overlaps"] == []
    assert journal_overlaps == []
    assert max(stats["connections"].values()) <= 2  # a company moved once at most
    assert "lease_lost" not in text["one"] + text["two"]
    assert "stream_replaced" not in text["one"] + text["two"]
    assert codes == [0, 0], text
    nodes = {node: sum(1 for h in holders.values() if h == node) for node in ("one", "two")}
    assert sum(nodes.values()) == scenario.companies, nodes
    share = scenario.companies // 2  # the issue asks for 100 ± 10 of 200; the slack is 2
    assert all(abs(n - share) <= 2 for n in nodes.values()), nodes
    batches = [int(n) for n in re.findall(r"event=leases_taken count=(\d+)", text["one"])]
    assert batches[0] <= 8  # the first batch: WAPOOL_MAX_CONCURRENT_CONNECTS
    _verify_all(url, tmp_path, scenario.companies)


def _shared(server: SimServerProcess, url: str, companies: int) -> bool:
    """Every company connected on the daemon holding its lease, each within its share."""
    live = {c["company"]: c["node"] for c in server.stats()["live"].values()}
    holders = _holders(url)
    counts = [sum(1 for h in holders.values() if h == n) for n in ("one", "two")]
    return (
        len(live) == companies
        and all(holders.get(c) == n for c, n in live.items())
        and all(abs(n - companies // 2) <= 2 for n in counts)
    )


def _verify_all(url: str, tmp_path: Path, companies: int) -> None:
    """Each company's store is on the host that drove it, equal to its PostgreSQL copy."""
    equal: set[str] = set()
    for name in ("one", "two"):
        env = {"WAPOOL_DATABASE_URL": url, "WAPOOL_STATE_DIR": str(tmp_path / name)}
        result = run_cli("verify", env=env, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        equal |= {line.split(":")[0] for line in result.stdout.splitlines() if ": EQUAL" in line}
    assert len(equal) == companies


@pytest.mark.timeout(600)
def test_a_second_daemon_mid_bring_up_never_doubles_a_client(
    database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    _run(REDUCED, database_url, whatsmeow_template, tmp_path)


@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("WAPOOL_SLOW") != "1", reason="slow profile: WAPOOL_SLOW=1")
def test_issue_scenario_at_full_size(
    database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    _run(FULL, database_url, whatsmeow_template, tmp_path)


@pytest.mark.timeout(300)
def test_a_killed_daemons_companies_move_without_overlap(
    database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    """SIGKILL: its workers die with it, and the survivor starts clients only on the leases it
    takes once they expired (each company connected once on each daemon: handed over to two
    before the kill, or taken over after it)."""
    scenario = Scenario(companies=6, lease_seconds=4, slow_store_seconds=0, second_after=0,
                        timeout=120)  # fmt: skip
    companies = [f"k{n}" for n in range(scenario.companies)]
    add_companies(database_url, *companies)
    asyncio.run(seed_copies(database_url, whatsmeow_template, tmp_path / "seed", companies))
    with running_sim_server(tmp_path) as server:
        one = _daemon(database_url, tmp_path / "one", "one", server, scenario, slow=False)
        two = None
        try:
            _wait(lambda: len(server.stats()["live"]) == len(companies), 120, "all up on one")
            two = _daemon(database_url, tmp_path / "two", "two", server, scenario, slow=False)
            _wait(lambda: b"event=daemon_ready" in (tmp_path / "two.log").read_bytes(), 60,
                  "the second daemon ready")  # fmt: skip
            # Two takes its fair share through handoffs first; then one dies.
            _wait(lambda: _shared(server, database_url, len(companies)), 120, "shared by two")
            one.send_signal(signal.SIGKILL)
            one.wait(10)
            _wait(lambda: all(c["node"] == "two" for c in server.stats()["live"].values()), 10,
                  "the killed daemon's clients gone")  # fmt: skip
            _wait(lambda: set(_holders(database_url).values()) == {"two"}, 60, "leases moved")
            _wait(lambda: len(server.stats()["live"]) == len(companies), 60, "all up on two")
            stats = server.stats()
        finally:
            for proc in (one, two):
                if proc is not None and proc.poll() is None:
                    proc.kill()
    assert stats["overlaps"] == []
    assert set(stats["connections"].values()) == {2}  # once on each daemon, never more
    assert {c["node"] for c in stats["live"].values()} == {"two"}
