"""Issue 13: a daemon restarted while PostgreSQL is down resumes the companies it held.

The scenario: companies running, PostgreSQL stopped for real (``pg_ctl stop -m immediate``),
the daemon SIGKILLed some seconds later (its workers with it), started again while PostgreSQL
is still down: every company is connected again within 15 s, the daemon says ``degraded``,
warns once; PostgreSQL returns, every lease is re-validated, one recovery event, and
``wapool verify`` finds every copy equal. The reduced size runs in ``make test``; the issue's
full size (20 companies, killed 10 s into the outage) with ``WAPOOL_SLOW=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.daemon import Daemons
from tests.fleet import seed_copies
from tests.simserver import running_sim_server
from tests.test_mirror import add_companies
from wapool.devdb import Cluster
from wapool.outage.last_seen import LastSeenStore

NODE = "solo"


@dataclass(frozen=True)
class Scenario:
    companies: int
    #: Seconds between PostgreSQL stopping and the daemon being killed (the issue: ten).
    kill_after: float


REDUCED = Scenario(companies=5, kill_after=2.0)
FULL = Scenario(companies=20, kill_after=10.0)


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {timeout:.0f} s: {what}"
        time.sleep(0.1)
    return time.monotonic()


def _held_on_disk(state: Path) -> int:
    seen = LastSeenStore(state, NODE).load()
    return 0 if seen is None else len(seen.leases)


def _run(scenario: Scenario, url: str, cluster: Cluster, template: Path, tmp_path: Path,
         daemons: Daemons) -> None:  # fmt: skip
    companies = [f"o{n:02d}" for n in range(scenario.companies)]
    add_companies(url, *companies)
    asyncio.run(seed_copies(url, template, tmp_path / "seed", companies))
    state = tmp_path / "state"
    with running_sim_server(tmp_path) as server:
        env = {
            "WAPOOL_DATABASE_URL": url, "WAPOOL_STATE_DIR": str(state),
            "WAPOOL_WHATSAPP_BACKEND": "simulated", "WAPOOL_SIMULATED_SERVER": str(server.socket),
            "WAPOOL_SIMULATED_CHURN_PER_SECOND": "3", "WAPOOL_NODE_NAME": NODE,
            "WAPOOL_LEASE_SECONDS": "6", "WAPOOL_CACHE_SWEEP_SECONDS": "1",
            "WAPOOL_COMPANIES_PER_WORKER": "10",
        }  # fmt: skip
        first = daemons.start(env, new_session=True)
        live = lambda: len(server.stats()["live"])  # noqa: E731
        _until(lambda: live() == len(companies), 90, "every company connected")
        _until(lambda: _held_on_disk(state) == len(companies), 30, "the leases on disk")
        cluster.stop("immediate")
        time.sleep(scenario.kill_after)  # the scenario's timeline, not a wait for a condition
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        _until(lambda: live() == 0, 15, "the killed daemon's clients gone")

        restarted = time.monotonic()
        second = daemons.start(env, log=tmp_path / "second.log", new_session=True)
        up = _until(lambda: live() == len(companies), 30, "every company connected again")
        assert up - restarted <= 15, f"connected {up - restarted:.1f} s after the restart"
        print(f"{len(companies)} companies connected {up - restarted:.1f} s after the restart")
        code, body = second.get("/readyz")
        assert code == 503, body
        assert body.startswith("degraded:"), body
        status = json.loads(second.get("/status")[1])
        assert status["mode"] == "degraded"
        assert status["offline_start"]["resumed"] == companies
        assert status["caches"]["registry_on_disk"]["age_seconds"] >= scenario.kill_after
        cli = run_cli("status", env=env | {"WAPOOL_HTTP_ADDR": f"127.0.0.1:{second.port}"},
                      cwd=tmp_path)  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert "mode: degraded" in cli.stdout
        for company in companies:
            assert re.search(rf"^{company} +connected +[1-9]", cli.stdout, re.M), cli.stdout

        cluster.start()
        second.wait_for("event=postgres_recovered_after_offline_start", 90)
        _until(lambda: second.get("/readyz") == (200, "ready\n"), 60, "ready again")
        assert json.loads(second.get("/status")[1])["mode"] == "normal"
        second.proc.send_signal(signal.SIGTERM)  # the daemon alone, as systemd does
        assert second.wait(60) == 0
        overlaps = server.stats()["overlaps"]
    text = second.text()
    assert text.count("event=started_without_postgres") == 1, text[-3000:]
    assert text.count("event=postgres_recovered_after_offline_start") == 1
    assert "event=postgres_outage_fallback" not in text  # the one warning covers them all
    assert "event=lease_lost" not in text
    assert overlaps == []
    result = run_cli("verify", env={"WAPOOL_DATABASE_URL": url, "WAPOOL_STATE_DIR": str(state)},
                     cwd=tmp_path, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": EQUAL") == len(companies)


@pytest.mark.timeout(300)
def test_a_restart_during_an_outage_resumes_every_company(
    database_url: str, running_cluster: Cluster, whatsmeow_template: Path, tmp_path: Path,
    daemons: Daemons,
) -> None:  # fmt: skip
    try:
        _run(REDUCED, database_url, running_cluster, whatsmeow_template, tmp_path, daemons)
    finally:
        running_cluster.start()


@pytest.mark.timeout(600)
@pytest.mark.skipif(os.environ.get("WAPOOL_SLOW") != "1", reason="slow profile: WAPOOL_SLOW=1")
def test_issue_scenario_at_full_size(
    database_url: str, running_cluster: Cluster, whatsmeow_template: Path, tmp_path: Path,
    daemons: Daemons,
) -> None:  # fmt: skip
    try:
        _run(FULL, database_url, running_cluster, whatsmeow_template, tmp_path, daemons)
    finally:
        running_cluster.start()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damaged", [None, "registry.json", "leases.json"])
def test_a_corrupt_state_file_is_ignored_and_the_daemon_waits_for_postgres(
    tmp_path: Path, daemons: Daemons, damaged: str | None
) -> None:
    """Nothing listens at the database address. Intact files: the daemon resumes its lease
    (the control). A damaged file: detected, logged, ignored; the daemon waits as before."""
    from datetime import UTC, datetime

    from wapool.devdb import free_port
    from wapool.registry.company import Company

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    now = datetime.now(UTC)
    store = LastSeenStore(state, NODE)
    store.save_registry([Company("c1", "", True, None, now, now)], [])
    store.save_leases({"c1": 4})
    if damaged:
        path = state / damaged
        path.write_bytes(path.read_bytes()[:-7])  # a torn write
    env = {
        "WAPOOL_DATABASE_URL": f"postgresql://wapool@127.0.0.1:{free_port()}/none",
        "WAPOOL_STATE_DIR": str(state), "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_NODE_NAME": NODE,
    }  # fmt: skip
    daemon = daemons.start(env)
    if damaged is None:
        daemon.wait_for("event=started_without_postgres", 60)
        daemon.wait_for("event=daemon_ready", 60)
        return
    lines = daemon.wait_for("event=last_seen_corrupt", 60)
    assert damaged in lines[-1]
    daemon.wait_for("event=waiting_for_database", 60)
    daemon.wait_for("event=waiting_for_database", 60)  # still waiting, as before issue 13
    text = daemon.text()
    assert "event=lease_adopted" not in text
    assert "event=daemon_ready" not in text
