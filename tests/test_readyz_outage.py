"""/readyz across a real PostgreSQL outage (``pg_ctl stop -m immediate``, then start again).

Ready while the outage is younger than the cache TTL, not ready once it is older, ready again
after PostgreSQL returns; liveness and the running session are never affected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import Daemon, Daemons
from wapool.devdb import Cluster

pytestmark = pytest.mark.timeout(120)
TTL = 4.0


def _until(predicate: Callable[[], bool], timeout: float = 30) -> float:
    """Poll until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)
    return time.monotonic()


def _metric(daemon: Daemon, name: str) -> float:
    families = text_string_to_metric_families(daemon.get("/metrics")[1])
    return next(s.value for f in families for s in f.samples if s.name == name)


def _state(daemon: Daemon) -> str:
    body = daemon.get("/status")[1]
    return str(json.loads(body)["companies"].get("962302", {}).get("state")) if body else ""


def test_readyz_flips_during_a_real_outage_longer_than_the_ttl(
    database_url: str, running_cluster: Cluster, tmp_path: Path, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302')")
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_CACHE_TTL_SECONDS": str(TTL),
        "WAPOOL_CACHE_SWEEP_SECONDS": "1",
    }
    daemon = daemons.start(env)
    try:
        _until(lambda: _state(daemon) == "connected")
        assert daemon.get("/readyz") == (200, "ready\n")

        stopped = time.monotonic()  # before: the daemon may see the server go during pg_ctl
        running_cluster.stop("immediate")
        assert daemon.get("/readyz")[0] == 200  # within the cache grace
        flipped = _until(lambda: daemon.get("/readyz")[0] == 503)
        assert flipped - stopped >= TTL  # never before the grace is over
        assert "PostgreSQL down" in daemon.get("/readyz")[1]
        assert daemon.get("/healthz") == (200, "ok\n")
        assert _metric(daemon, "wapool_database_up") == 0
        assert _state(daemon) == "connected"  # an outage never disconnects a client

        running_cluster.start()
        _until(lambda: daemon.get("/readyz") == (200, "ready\n"))
        assert _metric(daemon, "wapool_database_up") == 1
        assert _metric(daemon, "wapool_database_outage_seconds_total") >= TTL
        assert _state(daemon) == "connected"
    finally:
        running_cluster.start()  # before the daemons fixture stops the daemon: it drains first
