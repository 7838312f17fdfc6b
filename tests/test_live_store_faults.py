"""Stores that fail under running clients (issue 12, defects 3 and 4), reproduced as reported
with the simulated backend and real PostgreSQL: a live store truncated, a full disk."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest

from tests.diskfull import SmallDisk
from tests.fault_rig import RigDaemon, run_as

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]


def _env(database_url: str, state: Path) -> dict[str, str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme'), ('beta')")
    return {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(state),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_SIMULATED_CHURN_PER_SECOND": "50",
        "WAPOOL_CACHE_SWEEP_SECONDS": "1",
    }


async def _stop_and_verify(daemon: RigDaemon, env: dict[str, str], cwd: Path) -> None:
    assert await daemon.stop() == 0, daemon.text()[-3000:]
    assert "event=mirror_final_drain drained=True" in daemon.text()
    verified = run_as(None, ["verify"], env, cwd)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("EQUAL") == 2


async def test_a_store_broken_under_its_client_is_restored_and_the_client_restarted(
    database_url: str, tmp_path: Path
) -> None:
    env = _env(database_url, tmp_path / "state")
    store = tmp_path / "state" / "acme" / "store.db"
    daemon = RigDaemon(env, tmp_path, tmp_path / "daemon.log")
    try:
        await daemon.wait_for("state=connected", count=2, timeout=60)
        await daemon.wait_for("event=http_listening")
        os.truncate(store, 8192)  # header intact, tables gone
        text = await daemon.wait_for("company=acme state=store_failed", timeout=30)
        assert "Traceback" not in text
        await daemon.wait_for("event=store_ready company=acme action=restored-postgres")
        await daemon.wait_for("company=acme state=connected", count=2, timeout=30)
        status = run_as(None, ["status", "--json"], env, tmp_path)
        assert status.returncode == 0, status.stderr
        rows = {r["company"]: r for r in json.loads(status.stdout)}
        assert [c["file"] for c in rows["acme"]["replaced_stores"]]
        text = daemon.text()
        assert text.count("event=store_failed company=acme") == 1  # alerted once
        assert "company=beta state=store_failed" not in text
        assert (await daemon.get("/readyz"))[0] == 200
        await _stop_and_verify(daemon, env, tmp_path)
    finally:
        daemon.end()
    report = next(store.parent.glob("store.db.replaced-*.salvage.json"))
    assert json.loads(report.read_text())["company_id"] == "acme"


async def _readyz_says_full(daemon: RigDaemon) -> bool:
    code, body = await daemon.get("/readyz")
    return code == 503 and "full" in body and "bytes free" in body


async def until_async(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


#: An error line whose error is a bare exception type, without its message.
BARE_ERROR = re.compile(r"level=error .*error=[A-Za-z]+(Error|Exception)(\s|$)")


async def test_a_full_disk_stops_clients_until_writes_succeed_again(
    database_url: str, tmp_path: Path
) -> None:
    disk = SmallDisk(tmp_path / "state")
    env = _env(database_url, tmp_path / "state")
    daemon = RigDaemon(env, tmp_path, tmp_path / "daemon.log", pipe_log=not disk.mounted)
    try:
        await daemon.wait_for("state=connected", count=2, timeout=60)
        await daemon.wait_for("event=http_listening")
        disk.fill(daemon.pids())
        await daemon.wait_for("company=acme state=store_failed", timeout=30)
        await daemon.wait_for("company=beta state=store_failed", timeout=30)
        await until_async(lambda: _readyz_says_full(daemon), 30, "/readyz naming the full disk")
        state = (await daemon.status())["companies"]
        assert {c: s["state"] for c, s in state.items()} == {  # type: ignore[union-attr, index]
            "acme": "store_failed", "beta": "store_failed",
        }  # fmt: skip
        await daemon.wait_for("event=store_unavailable", timeout=30)  # a repair was tried

        disk.free(daemon.pids())
        await daemon.wait_for("company=acme state=connected", count=2, timeout=90)
        await daemon.wait_for("company=beta state=connected", count=2, timeout=90)
        text = daemon.text()
        assert text.count("event=store_failed company=acme") == 1
        assert "daemon_starting" not in text[text.index("state=store_failed") :]
        assert not [line for line in text.splitlines() if BARE_ERROR.search(line)]
        assert all('error=""' not in line for line in text.splitlines() if "level=error" in line)
        assert (await daemon.get("/readyz"))[0] == 200
        await _stop_and_verify(daemon, env, tmp_path)
    finally:
        daemon.end()
        disk.close()
