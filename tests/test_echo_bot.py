"""``examples/echo_bot.py`` end to end: simulated contacts write to a company, the daemon's
webhook hands each message to the bot, the bot answers through the API, the answers reach the
contacts and come back read. Real daemon, real PostgreSQL, the simulated WhatsApp server, the
bot in its own process. A redelivered event is not answered twice (idempotency key = event id);
the simulated echo contact and the bot do not answer each other forever."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.api_client import TOKEN, send_accepted, wait_status
from tests.daemon import Daemons
from tests.simserver import running_sim_server
from wapool.devdb import free_port
from wapool.whatsapp.sim_messages import ECHO_JID

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
SECRET = "bot-secret-0123456789"


def _answers(url: str) -> list[tuple[str, str, str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT to_jid, text, status, idempotency_key FROM outbound_messages "
            "WHERE idempotency_key LIKE 'echo-%'"
        ).fetchall()
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def test_the_echo_bot_answers_through_the_api(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme')")
    bot_port, api_port = free_port(), free_port()
    bot = daemons.start(
        {"ECHO_BOT_LISTEN": f"127.0.0.1:{bot_port}", "ECHO_BOT_API_URL":
         f"http://127.0.0.1:{api_port}", "ECHO_BOT_API_TOKEN": TOKEN,
         "ECHO_BOT_WEBHOOK_SECRET": SECRET, "WAPOOL_HTTP_ADDR": f"127.0.0.1:{bot_port}"},
        command=(sys.executable, str(ROOT / "examples" / "echo_bot.py")),
    )  # fmt: skip
    bot.wait_for("listening on")
    with running_sim_server(tmp_path) as server:
        daemon = daemons.start({
            "WAPOOL_DATABASE_URL": database_url,
            "WAPOOL_STATE_DIR": str(tmp_path / "state"),
            "WAPOOL_HTTP_ADDR": f"127.0.0.1:{api_port}",
            "WAPOOL_WHATSAPP_BACKEND": "simulated",
            "WAPOOL_SIMULATED_SERVER": str(server.socket),
            "WAPOOL_SIMULATED_CHURN_PER_SECOND": "0",
            "WAPOOL_SIMULATED_INBOUND_PER_SECOND": "2",
            "WAPOOL_API_TOKENS": TOKEN,
            "WAPOOL_SEND_PER_MINUTE": "600",
            "WAPOOL_SEND_BURST": "20",
            "WAPOOL_WEBHOOK_URL": f"http://127.0.0.1:{bot_port}/webhook",
            "WAPOOL_WEBHOOK_SECRET": SECRET,
        })  # fmt: skip
        deadline = time.monotonic() + 90
        while len([a for a in _answers(database_url) if a[2] == "read"]) < 3:
            assert time.monotonic() < deadline, (_answers(database_url), daemon.rest()[-2000:])
            time.sleep(0.3)
        answers = _answers(database_url)
        assert all(a[0].startswith("5511900000") and a[1].startswith("You said: sim ")
                   for a in answers)  # fmt: skip
        assert len({a[3] for a in answers}) == len(answers)
        received = server.stats()["received"]
        assert sum(n for jid, n in received.items() if jid.startswith("5511900000")) >= 3

        hello = send_accepted(api_port, "acme", {"to": ECHO_JID, "text": "hello"})
        wait_status(api_port, "acme", hello["id"], lambda s: s == "read")
        deadline = time.monotonic() + 3  # the echo's answer quotes ours: the bot stays silent
        while time.monotonic() < deadline:
            assert server.stats()["received"][ECHO_JID] == 1
            time.sleep(0.2)

        forged = urllib.request.Request(
            f"http://127.0.0.1:{bot_port}/webhook", method="POST",
            data=json.dumps({"type": "message"}).encode(),
            headers={"X-Wapool-Timestamp": str(int(time.time())),
                     "X-Wapool-Signature": "sha256=" + "0" * 64},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=5)
        assert refused.value.code == 401
