"""The inbound drill with real daemons: simulated inbound traffic, a real PostgreSQL outage
(``pg_ctl stop -m immediate``), a SIGKILL of the daemon during it and a restart. Every message
the sessions durably received (the inboxes) reaches the webhook at least once, in chat order,
and ``inbound_messages`` exactly once, sealed (the daemons run with a master key: a daemon
restarted during the outage has no data key cached, so its messages wait in the inbox).

Reduced by default (3 companies x 10 msg/s, a few seconds of outage); ``WAPOOL_SLOW=1``: the
issue's size (20 companies, 100 msg/s in all, 3 minutes of outage)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.daemon import Daemons
from tests.webhook_receiver import Receiver, receiving
from wapool.crypto import keyring
from wapool.devdb import Cluster

SLOW = os.environ.get("WAPOOL_SLOW") == "1"
COMPANIES = [f"co{i:02d}" for i in range(20 if SLOW else 3)]
PER_COMPANY = 100 / 20 if SLOW else 10.0
OUTAGE = 180.0 if SLOW else 4.0
SECRET = "drill-secret"

pytestmark = pytest.mark.timeout(900 if SLOW else 240)


def inbox_messages(state: Path) -> dict[str, list[tuple[int, str, str]]]:
    """company -> [(seq, message id, chat)] of what each inbox holds."""
    found = {}
    for company in COMPANIES:
        path = state / company / "inbox.db"
        if not path.exists():
            continue
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT seq, body FROM inbox WHERE type = 'message' ORDER BY seq")
            found[company] = [
                (seq, (b := json.loads(body))["message_id"], b["chat"]) for seq, body in rows
            ]
    return found


def in_postgres(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT company_id, message_id FROM inbound_messages").fetchall()
    return [(str(c), str(m)) for c, m in rows]


async def until(check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_inbound_survives_an_outage_and_a_kill(
    database_url: str, running_cluster: Cluster, tmp_path: Path, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for company in COMPANIES:
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (company,))
    state = tmp_path / "state"
    keyring.write(tmp_path / "master.key", [keyring.new_key()])
    async with receiving(SECRET.encode()) as receiver:
        env = {
            "WAPOOL_MASTER_KEY_FILE": str(tmp_path / "master.key"),
            "WAPOOL_DATABASE_URL": database_url,
            "WAPOOL_STATE_DIR": str(state),
            "WAPOOL_WHATSAPP_BACKEND": "simulated",
            "WAPOOL_SIMULATED_CHURN_PER_SECOND": "2",
            "WAPOOL_SIMULATED_INBOUND_PER_SECOND": str(PER_COMPANY),
            "WAPOOL_WEBHOOK_URL": receiver.url,
            "WAPOOL_WEBHOOK_SECRET": SECRET,
            "WAPOOL_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
            "WAPOOL_WEBHOOK_RETRY_CAP_SECONDS": "1",
            "WAPOOL_LOG_LEVEL": "INFO",
        }
        log = tmp_path / "daemon.log"
        daemon = daemons.start(env, log=log)
        await daemon.wait_for_async("event=daemon_ready", 60)
        await until(
            lambda: len(receiver.accepted) >= 20 and len(in_postgres(database_url)) >= 20, 60
        )
        try:
            running_cluster.stop("immediate")
            during = len(receiver.accepted)
            await asyncio.sleep(OUTAGE / 2)
            assert len(receiver.accepted) > during  # webhooks flow while PostgreSQL is down
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
            daemon = daemons.start(env, log=log)  # restarted while PostgreSQL is still down
            await asyncio.sleep(OUTAGE / 2)
        finally:
            running_cluster.start()
        await daemon.wait_for_async("event=daemon_ready", 120)
        await asyncio.sleep(2)
        assert daemon.stop(timeout=60) == 0  # clients stop: no more inbound
        # A last run with no new traffic drains whatever is left.
        daemon = daemons.start(env | {"WAPOOL_SIMULATED_INBOUND_PER_SECOND": "0"}, log=log)
        await daemon.wait_for_async("event=daemon_ready", 60)
        received = inbox_messages(state)
        expected = {(c, m) for c, rows in received.items() for _, m, _ in rows}
        assert len(expected) >= len(COMPANIES) * PER_COMPANY * OUTAGE / 2

        def webhook_ids() -> set[tuple[str, str]]:
            return {
                (b["company"], b["message_id"])
                for _, b in receiver.accepted
                if b["type"] == "message"
            }

        await until(lambda: expected <= webhook_ids(), 120)
        await until(lambda: expected <= set(in_postgres(database_url)), 120)
        metrics = daemon.get("/metrics")[1]
        assert "wapool_webhook_delivered_total" in metrics
        assert "wapool_inbound_mirrored_total" in metrics
        status = json.loads(daemon.get("/status")[1])["messaging"]
        assert status["webhook"]["dead_letters"] == {}
        assert status["inbound_pending_postgres"] == 0
        report = run_cli("status", "--json", env=env, cwd=tmp_path)
        assert report.returncode == 0, report.stderr
        assert {r["webhook_dead_letters"] for r in json.loads(report.stdout)} == {0}
        assert daemon.stop(timeout=60) == 0
    rows = in_postgres(database_url)
    assert len(rows) == len(set(rows)) == len(expected)  # once each, nothing else
    with psycopg.connect(database_url) as conn:
        clear = conn.execute(
            "SELECT count(*) FROM inbound_messages WHERE sealed IS NULL OR event IS NOT NULL "
            "OR body <> ''"
        ).fetchone()
    assert clear == (0,)
    _assert_chat_order(receiver, received)
    assert receiver.bad_signatures == 0


def _assert_chat_order(receiver: Receiver, received: dict[str, list[tuple[int, str, str]]]) -> None:
    """Per chat, first arrivals at the webhook follow the inbox order (redeliveries aside)."""
    seq_of = {(c, m): s for c, rows in received.items() for s, m, _ in rows}
    seen: set[tuple[str, str]] = set()
    last: dict[tuple[str, str], int] = {}
    for _, body in receiver.accepted:
        key = (body["company"], body["message_id"])
        if body["type"] != "message" or key in seen:
            continue
        seen.add(key)
        chat = (body["company"], body["chat"])
        assert seq_of[key] > last.get(chat, 0), f"out of order in {chat}"
        last[chat] = seq_of[key]
