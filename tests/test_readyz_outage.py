"""/readyz across a real PostgreSQL outage (``pg_ctl stop -m immediate``, then start again).

Ready while the outage is younger than the cache TTL, not ready once it is older, ready again
after PostgreSQL returns; liveness and the running session are never affected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from wapool.devdb import Cluster, free_port

pytestmark = pytest.mark.timeout(120)
TTL = 4.0


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""  # not listening (yet)


def _until(predicate: Callable[[], bool], timeout: float = 30) -> float:
    """Poll until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)
    return time.monotonic()


def _metric(port: int, name: str) -> float:
    families = text_string_to_metric_families(_get(port, "/metrics")[1])
    return next(s.value for f in families for s in f.samples if s.name == name)


def _state(port: int) -> str:
    body = _get(port, "/status")[1]
    return str(json.loads(body)["companies"].get("962302", {}).get("state")) if body else ""


def test_readyz_flips_during_a_real_outage_longer_than_the_ttl(
    database_url: str, running_cluster: Cluster, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302')")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")} | {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_HTTP_ADDR": f"127.0.0.1:{port}",
        "WAPOOL_CACHE_TTL_SECONDS": str(TTL),
        "WAPOOL_CACHE_SWEEP_SECONDS": "1",
    }
    proc = subprocess.Popen([sys.executable, "-m", "wapool", "run"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _until(lambda: _state(port) == "connected")
        assert _get(port, "/readyz") == (200, "ready\n")

        running_cluster.stop("immediate")
        stopped = time.monotonic()
        assert _get(port, "/readyz")[0] == 200  # within the cache grace
        flipped = _until(lambda: _get(port, "/readyz")[0] == 503)
        assert flipped - stopped >= TTL  # never before the grace is over
        assert "PostgreSQL down" in _get(port, "/readyz")[1]
        assert _get(port, "/healthz") == (200, "ok\n")
        assert _metric(port, "wapool_database_up") == 0
        assert _state(port) == "connected"  # an outage never disconnects a client

        running_cluster.start()
        _until(lambda: _get(port, "/readyz") == (200, "ready\n"))
        assert _metric(port, "wapool_database_up") == 1
        assert _metric(port, "wapool_database_outage_seconds_total") >= TTL
        assert _state(port) == "connected"
    finally:
        running_cluster.start()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(45)
        finally:
            proc.kill()
