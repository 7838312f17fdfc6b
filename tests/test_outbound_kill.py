"""A send interrupted by a SIGKILL is ``uncertain`` after the restart, visibly, and is not
sent again unless the producer asks (``POST .../retry``); a send whose answer never comes is
``uncertain`` too. Real daemon, simulated WhatsApp server (numbers starting with 998 are never
answered), real PostgreSQL."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api_client import TOKEN, call, send_accepted, wait_status
from tests.daemon import Daemons
from tests.simserver import SimServerProcess, running_sim_server
from wapool.whatsapp.sim_messages import ECHO_JID

pytestmark = pytest.mark.timeout(180)
LOST = "998123456789@s.whatsapp.net"


def _sends(server: SimServerProcess) -> Counter[str]:
    return Counter(str(r["id"]) for r in server.records("send"))


def test_a_kill_while_sending_leaves_it_uncertain_until_retried(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme')")
    with running_sim_server(tmp_path) as server:
        env = {
            "WAPOOL_DATABASE_URL": database_url,
            "WAPOOL_STATE_DIR": str(tmp_path / "state"),
            "WAPOOL_WHATSAPP_BACKEND": "simulated",
            "WAPOOL_SIMULATED_SERVER": str(server.socket),
            "WAPOOL_SIMULATED_CHURN_PER_SECOND": "0",
            "WAPOOL_API_TOKENS": TOKEN,
        }
        daemon = daemons.start(env)
        port = daemon.port or 0
        lost_id = str(send_accepted(port, "acme", {"to": LOST, "text": "lost"})["id"])
        wait_status(port, "acme", lost_id, lambda s: s == "sending")
        while _sends(server)[lost_id] < 1:  # it reached WhatsApp; the answer never comes
            time.sleep(0.05)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)

        daemon = daemons.start(env)
        port = daemon.port or 0
        daemon.wait_for("event=sends_interrupted")
        after = wait_status(port, "acme", lost_id, lambda s: s == "uncertain", timeout=60)
        assert "interrupted while sending" in after["reason"]
        later = send_accepted(port, "acme", {"to": ECHO_JID, "text": "after the kill"})
        wait_status(port, "acme", later["id"], lambda s: s == "read")
        assert _sends(server)[lost_id] == 1  # not repeated by wapool
        families = {f.name: f for f in text_string_to_metric_families(daemon.get("/metrics")[1])}
        uncertain = [s.value for s in families["wapool_outbound_messages"].samples
                     if s.labels["status"] == "uncertain"]  # fmt: skip
        assert uncertain == [1.0]

        code, _, answer = call(port, "POST", f"/v1/companies/acme/messages/{later['id']}/retry")
        assert (code, answer["error"]["code"]) == (409, "not_retryable")
        code, _, retried = call(port, "POST", f"/v1/companies/acme/messages/{lost_id}/retry")
        assert code == 202
        assert retried["status"] in ("queued", "sending")
        again = wait_status(port, "acme", lost_id, lambda s: s == "uncertain", timeout=30)
        assert "did not answer" in again["reason"]  # its answer is lost again: uncertain
        assert _sends(server)[lost_id] == 2  # the retry the producer asked for, once
