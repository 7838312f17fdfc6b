"""``wapool run`` as operators run it: a real child process, real signals, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import proxied, run_cli
from tests.daemon import Daemons
from wapool.db.migrations import latest_version
from wapool.errors import ExitCode
from wapool.testing.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_runs_until_signalled_then_stops_cleanly(
    database_url: str, tmp_path: Path, sig: signal.Signals, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302'), ('acme')")
        conn.execute("UPDATE companies SET enabled = false WHERE id = 'acme'")
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path)}
    daemon = daemons.start(env)
    lines = daemon.wait_for("event=daemon_ready")
    ready = lines[-1]
    assert f"schema_version={latest_version()}" in ready
    assert "companies=1 stores=1" in ready
    assert (tmp_path / "962302" / "store.db").exists()  # provisioned through neonize
    assert all(" level=" in line and " event=" in line for line in lines)
    assert "\x1b[" not in "".join(lines)  # no colour codes off a terminal
    returncode = daemon.stop(sig, timeout=15)
    err = daemon.rest()
    assert returncode == ExitCode.OK, err
    assert "event=cleanup_scheduled next_run=" in "\n".join(lines) + err
    scheduled = ("\n".join(lines) + err).split("event=cleanup_scheduled", 1)[1].splitlines()[0]
    if "catch_up=True" in scheduled:
        # Started within the misfire grace (an hour) after 03:00 UTC on a fresh database: the
        # missed slot runs now (tests/test_cleanup_interrupted.py covers that path).
        assert re.search(r" 03:\d\d:\d\d", scheduled), scheduled
    else:
        assert "03:00:00+00:00" in scheduled, scheduled
    assert f"event=stop_requested signal={sig.name}" in err
    assert "event=daemon_stopped" in err


def test_waits_for_an_unreachable_database_and_still_stops(
    tmp_path: Path, daemons: Daemons
) -> None:
    secret = "Sup3rS3cret"
    env = {
        "WAPOOL_DATABASE_URL": f"postgresql://wapool:{secret}@127.0.0.1:1/wapool",
        "WAPOOL_STATE_DIR": str(tmp_path),
    }
    daemon = daemons.start(env)
    lines = daemon.wait_for("event=waiting_for_database")
    assert daemon.stop(timeout=15) == ExitCode.OK
    err = daemon.rest()
    assert secret not in "\n".join(lines) + err
    assert "database=127.0.0.1:1/wapool" in "\n".join(lines)


def test_journal_lines_carry_syslog_priorities(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path),
        "JOURNAL_STREAM": "8:1234",
    }
    daemon = daemons.start(env)
    lines = daemon.wait_for("event=daemon_ready")
    daemon.stop(timeout=15)
    assert lines[-1].startswith("<6>level=info ")
    assert "ts=" not in lines[-1]  # the journal stamps lines itself


def test_second_sigint_forces_exit(daemons: Daemons) -> None:
    script = textwrap.dedent(
        """
        import asyncio, logging, sys
        from wapool.daemon import StopSignals
        from wapool.observability.logs import configure_logging

        async def main():
            signals = StopSignals()
            signals.install()
            print("ready", file=sys.stderr, flush=True)
            await signals.stop.wait()
            print("slow shutdown", file=sys.stderr, flush=True)
            await asyncio.sleep(30)

        configure_logging("INFO")
        asyncio.run(main())
        """
    )
    script_run = daemons.start(command=[sys.executable, "-c", script])
    script_run.wait_for("ready")
    script_run.send_signal(signal.SIGINT)
    script_run.wait_for("slow shutdown")
    started = time.monotonic()
    returncode = script_run.stop(signal.SIGINT, timeout=10)
    assert returncode == ExitCode.INTERRUPTED
    assert time.monotonic() - started < 5
    assert "event=forced_exit signal=SIGINT" in script_run.rest()


def test_simulated_sessions_run_in_workers_and_are_mirrored(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    """The whole path: registry -> provisioned store -> client in a worker (simulated backend,
    pairs at once) -> key churn -> mirror -> PostgreSQL; a clean stop leaves verify equal."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302'), ('acme')")
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_SIMULATED_CHURN_PER_SECOND": "50",
    }
    daemon = daemons.start(env)
    daemon.wait_for("event=daemon_ready")
    daemon.wait_for("state=connected")
    daemon.wait_for("state=connected")
    for _ in range(50):  # the daemon records a state just after it logs it
        status = run_cli("status", "--json", env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        report = {r["company"]: r for r in json.loads(status.stdout)}
        if all(r["state"] == "connected" for r in report.values()):
            break
    assert {c: r["state"] for c, r in report.items()} == {
        "962302": "connected",
        "acme": "connected",
    }
    assert all(isinstance(r["pending_rows"], int) for r in report.values())
    assert all(r["node"] and r["since"] for r in report.values())
    table = run_cli("status", env=env, cwd=tmp_path)
    assert table.stdout.splitlines()[0].split() == [
        "COMPANY", "STATE", "SINCE", "MIRROR", "LAG", "PENDING", "LAST", "ERROR",
    ]  # fmt: skip
    returncode = daemon.stop(timeout=40)
    err = daemon.rest()
    assert returncode == ExitCode.OK, err
    assert "event=clients_stopped" in err
    assert "event=mirror_final_drain drained=True" in err
    with psycopg.connect(database_url) as conn:
        rows = dict(conn.execute(
            "SELECT company_id, count(*) FROM store_rows WHERE tbl = 'whatsmeow_device' GROUP BY 1"
        ).fetchall())  # fmt: skip
    assert rows == {"962302": 1, "acme": 1}  # both paired, credentials durable in PostgreSQL
    with psycopg.connect(database_url) as conn:
        jids = conn.execute("SELECT paired_jid FROM companies ORDER BY id").fetchall()
    assert all(jid and jid.endswith("@s.whatsapp.net") for (jid,) in jids)  # recorded on Paired
    result = run_cli("verify", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("EQUAL") == 2


def test_registry_changes_reach_the_daemon_at_once(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    """LISTEN/NOTIFY: a new company is picked up long before the 60 s periodic reconcile."""
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_CACHE_SWEEP_SECONDS": "600",
    }
    daemon = daemons.start(env)
    assert "companies=0" in daemon.wait_for("event=daemon_ready")[-1]
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('late-comer')")
    line = daemon.wait_for("company=late-comer state=connected", timeout=30)[-1]
    assert time.monotonic() - started < 10, line
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE companies SET enabled = false WHERE id = 'late-comer'")
    daemon.wait_for("event=store_released company=late-comer", timeout=30)
    assert daemon.stop(timeout=30) == ExitCode.OK


async def test_postgres_outage_never_stops_a_running_client(
    database_url: str, proxy: FaultProxy, tmp_path: Path, daemons: Daemons
) -> None:
    """Invariant 3, end to end: sessions stay connected through an outage longer than the lease
    and the cache sweep, and everything written meanwhile reaches PostgreSQL afterwards."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302')")
    env = {
        "WAPOOL_DATABASE_URL": proxied(database_url, proxy),
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_SIMULATED_CHURN_PER_SECOND": "50",
        "WAPOOL_LEASE_SECONDS": "3",
        "WAPOOL_CACHE_SWEEP_SECONDS": "1",
        "WAPOOL_CACHE_TTL_SECONDS": "2",
    }
    daemon = daemons.start(env)
    await daemon.wait_for_async("state=connected")
    await proxy.refuse()
    await daemon.wait_for_async("event=database_down")
    await asyncio.sleep(6)  # the outage itself: twice the lease, six sweeps, beyond the TTL
    await proxy.restore()
    during = "\n".join(await daemon.wait_for_async("event=database_up"))
    assert "state=stopped" not in during
    assert "lease_lost" not in during
    assert "store_released" not in during
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.wait, 40) == ExitCode.OK
    assert "event=mirror_final_drain drained=True" in daemon.text()
    result = run_cli("verify", env=env | {"WAPOOL_DATABASE_URL": database_url}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
