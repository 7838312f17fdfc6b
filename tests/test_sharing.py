"""Several daemons share the companies (issue 11): a daemon that joins gets its fair share
through graceful handoffs, a killed one's companies are driven elsewhere and it gets its share
back when it returns, a rolling restart keeps every company's downtime short, and a PostgreSQL
outage during a handoff never lets two nodes drive one company. Real daemons, real PostgreSQL,
the simulated backend and one shared simulated WhatsApp server that counts overlaps.

Reduced sizes in ``make test``; ``WAPOOL_SLOW=1`` runs the issue's 300 companies on three nodes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.daemon import Daemons
from tests.fleet import SLACK, Fleet, downtimes, p99, seed, wait
from tests.simserver import running_sim_server
from wapool.devdb import Cluster

SLOW = os.environ.get("WAPOOL_SLOW") == "1"


@pytest.mark.timeout(400)
def test_a_joining_daemon_gets_its_share_through_handoffs(
    database_url: str, whatsmeow_template: Path, tmp_path: Path, daemons: Daemons
) -> None:
    companies = seed(database_url, whatsmeow_template, tmp_path / "seed", 24)
    with running_sim_server(tmp_path) as server:
        fleet = Fleet(database_url, tmp_path, daemons, server, lease=6)
        fleet.start("one")
        wait(lambda: fleet.balanced(len(companies), ["one"]), 150, "all up on one")
        two = fleet.start("two")
        wait(lambda: fleet.balanced(len(companies), ["one", "two"]), 150, "shared by two")
        assert "event=handoff_done" in fleet.running["one"].text()
        assert "handed_at_seq=" in two.text()
        time.sleep(fleet.lease * 2 / 3)  # two renewals more: nothing flaps back
        assert fleet.balanced(len(companies), ["one", "two"])
        nodes = fleet.cli("one", "nodes")
        stats = server.stats()
        metrics = fleet.running["one"].get("/metrics")[1]
        fleet.stop_all()
    assert stats["overlaps"] == []
    assert max(stats["connections"].values()) <= 2  # a company moves once at most
    assert sum(1 for n in stats["connections"].values() if n == 2) == len(companies) // 2
    assert "one" in nodes and "two" in nodes and "live" in nodes
    assert 'wapool_handoffs_total{direction="out",node="one"} 12.0' in metrics
    assert 'wapool_handoff_seconds{node="one",quantile="0.99"}' in metrics
    fleet.verify_all(["one", "two"], companies)
