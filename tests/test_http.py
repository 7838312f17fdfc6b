"""/healthz, /readyz, /metrics and /status from a real daemon; /readyz flips during a real
outage longer than the cache TTL; nothing served contains a secret."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import proxied
from tests.daemon import Daemons
from wapool.devdb import free_port
from wapool.observability.http import is_loopback
from wapool.testing.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(90)
SECRET = "http-s3cret-pw"


async def _until(predicate: object, timeout: float = 30) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_endpoints_and_readiness_during_an_outage(
    database_url: str, proxy: FaultProxy, tmp_path: Path, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302')")
        conn.execute(  # a size sample from an earlier day, as the daily job leaves it
            "INSERT INTO store_size_history (sampled_on, company_id, tbl, rows, bytes) "
            "VALUES (current_date - 1, '962302', 'whatsmeow_sessions', 42, 4200)"
        )
    url = proxied(database_url, proxy).replace("postgres@", f"postgres:{SECRET}@")
    env = {
        "WAPOOL_DATABASE_URL": url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_CACHE_TTL_SECONDS": "2",
        "WAPOOL_CACHE_SWEEP_SECONDS": "1",
    }
    daemon = daemons.start(env)
    try:
        await _until(lambda: daemon.get("/status")[1].count('"connected"') == 1)
        assert daemon.get("/healthz") == (200, "ok\n")
        assert daemon.get("/readyz") == (200, "ready\n")
        code, metrics = daemon.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        assert code == 200
        connected = [
            s for s in families["wapool_sessions"].samples if s.labels["state"] == "connected"
        ]
        assert connected[0].value == 1
        assert "wapool_mirror_lag_seconds" in families
        sizes = {s.labels["table"]: s.value for s in families["wapool_store_rows"].samples}
        assert sizes == {"whatsmeow_sessions": 42}
        assert "wapool_worker_restarts" in families  # counters drop their _total suffix here
        status = json.loads(daemon.get("/status")[1])
        assert status["companies"]["962302"]["state"] == "connected"
        assert daemon.get("/nope")[0] == 404

        await proxy.refuse()  # longer than the 2 s cache TTL: not ready
        await _until(lambda: daemon.get("/readyz")[0] == 503, timeout=30)
        assert "PostgreSQL down" in daemon.get("/readyz")[1]
        assert daemon.get("/healthz")[0] == 200  # the loop itself is fine
        await proxy.restore()
        await _until(lambda: daemon.get("/readyz")[0] == 200, timeout=30)
        everything = "".join(daemon.get(p)[1] for p in ("/metrics", "/status", "/readyz"))
        assert SECRET not in everything
    finally:  # while this loop still runs the proxy the daemon drains through
        daemon.send_signal(signal.SIGTERM)
        await asyncio.to_thread(daemon.wait, 30)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("wapool.example", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_is_warned_about(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    port = free_port()
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_HTTP_ADDR": f"0.0.0.0:{port}",
    }
    daemon = daemons.start(env)
    lines = daemon.wait_for("event=http_not_loopback")
    warning = lines[-1]
    assert "level=warning" in warning
    assert f"address=0.0.0.0:{port}" in warning
