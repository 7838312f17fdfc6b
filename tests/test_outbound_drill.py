"""The outbound drill with a real daemon: API traffic over many companies through a real
PostgreSQL outage (``pg_ctl stop -m immediate``), a SIGKILL of the daemon during it, a restart.
Every accepted message is sent exactly once or is visibly ``uncertain``; no idempotency key is
sent twice (a producer retries every request whose answer it did not get, with the same key);
messages accepted during the outage are sent during the outage. The daemons run with a master
key: every row in ``outbound_messages`` is sealed.

Reduced by default (4 companies, 8 msg/s in all, 6 s of outage); ``WAPOOL_SLOW=1``: the issue's
size (20 companies, 20 msg/s, 3 minutes of outage)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.api_client import TOKEN, call
from tests.daemon import Daemon, Daemons
from tests.simserver import running_sim_server
from wapool.crypto import keyring
from wapool.devdb import Cluster
from wapool.whatsapp.sim_messages import ECHO_JID

SLOW = os.environ.get("WAPOOL_SLOW") == "1"
COMPANIES = [f"co{i:02d}" for i in range(20 if SLOW else 4)]
RATE = 20.0 if SLOW else 8.0
OUTAGE = 180.0 if SLOW else 6.0
FINAL = {"sent", "delivered", "read", "failed", "uncertain"}

pytestmark = pytest.mark.timeout(1200 if SLOW else 300)


class Producer:
    """Posts messages at ``RATE`` round-robin over the companies; a request without an answer
    (the daemon was killed, refused, 503) is retried with the same key until it is accepted."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted: dict[str, str] = {}  # idempotency key -> message id
        self.accepted_at: dict[str, float] = {}
        self.retries = 0
        self.stop = threading.Event()
        self._keys = itertools.count()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        pending: list[tuple[str, str]] = []
        next_at = time.monotonic()
        while not self.stop.is_set() or pending:
            if not self.stop.is_set():
                n = next(self._keys)
                pending.append((COMPANIES[n % len(COMPANIES)], f"key-{n}"))
            still = []
            for company, key in pending:
                code, _, answer = call(self.port, "POST", f"/v1/companies/{company}/messages",
                                       {"to": ECHO_JID, "text": key, "idempotency_key": key})  # fmt: skip
                if code == 202:
                    assert self.accepted.setdefault(key, answer["id"]) == answer["id"]
                    self.accepted_at.setdefault(key, time.time())
                else:
                    assert code in (0, 503), (code, answer)  # down, or not driving yet
                    self.retries += 1
                    still.append((company, key))
            pending = still
            next_at += 1.0 / RATE
            time.sleep(max(0.0, next_at - time.monotonic()) if not pending else 0.2)


def _statuses(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id::text, status FROM outbound_messages").fetchall()
    return {str(i): str(s) for i, s in rows}


def _accepting(daemon: Daemon, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        body = daemon.get("/status")[1]
        accepting = json.loads(body)["outbound"]["accepting"] if body else []
        if set(accepting) == set(COMPANIES):
            return
        assert time.monotonic() < deadline, f"accepting only {accepting}"
        time.sleep(0.2)


def test_outbound_survives_an_outage_and_a_kill(
    database_url: str, running_cluster: Cluster, tmp_path: Path, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for company in COMPANIES:
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (company,))
    state = tmp_path / "state"
    keyring.write(tmp_path / "master.key", [keyring.new_key()])
    with running_sim_server(tmp_path) as server:
        env = {
            "WAPOOL_MASTER_KEY_FILE": str(tmp_path / "master.key"),
            "WAPOOL_DATABASE_URL": database_url,
            "WAPOOL_STATE_DIR": str(state),
            "WAPOOL_WHATSAPP_BACKEND": "simulated",
            "WAPOOL_SIMULATED_SERVER": str(server.socket),
            "WAPOOL_SIMULATED_CHURN_PER_SECOND": "1",
            "WAPOOL_API_TOKENS": TOKEN,
            "WAPOOL_SEND_PER_MINUTE": "600",
            "WAPOOL_SEND_BURST": "20",
            "WAPOOL_SEND_GLOBAL_PER_SECOND": "200",
            "WAPOOL_LEASE_SECONDS": "6",
        }
        daemon = daemons.start(env)
        producer = Producer()
        producer.port = daemon.port or 0
        _accepting(daemon)
        producer.start()
        time.sleep(2.0)  # traffic with PostgreSQL up
        running_cluster.stop("immediate")
        outage_from = time.time()
        time.sleep(OUTAGE * 0.7)  # accepted and sent with PostgreSQL down...
        daemon.send_signal(signal.SIGKILL)  # ... and a kill in the middle of it
        daemon.wait(30)
        time.sleep(OUTAGE * 0.3)
        running_cluster.start()
        outage_to = time.time()
        daemon = daemons.start(env)  # the same state directory, the same node name
        producer.port = daemon.port or 0
        time.sleep(3.0)
        producer.join()
        assert producer.accepted, "nothing was accepted"

        deadline = time.monotonic() + 120
        while True:
            statuses = _statuses(database_url)
            open_ = [i for i in producer.accepted.values() if statuses.get(i) not in FINAL]
            if not open_:
                break
            assert time.monotonic() < deadline, f"{len(open_)} messages not finished: {open_[:3]}"
            time.sleep(0.5)

        sends = server.records("send")
        per_id = Counter(str(r["id"]) for r in sends)
        assert server.stats()["duplicates"] == []
        assert all(n == 1 for n in per_id.values())
        for key, message_id in producer.accepted.items():
            status = statuses[message_id]
            assert status != "failed", (key, status)
            if status != "uncertain":  # sent, delivered or read: on the server exactly once
                assert per_id[message_id] == 1, (key, message_id, status)
        assert len(set(producer.accepted.values())) == len(producer.accepted)  # one id per key
        during = [k for k, at in producer.accepted_at.items() if outage_from < at < outage_to]
        assert during, "nothing was accepted during the outage"
        sent_during = [r for r in sends if outage_from < float(r.get("at", 0) or 0) < outage_to]
        uncertain = [i for i in producer.accepted.values() if statuses[i] == "uncertain"]
        print(
            f"accepted {len(producer.accepted)} (during the outage {len(during)}), "
            f"sends {len(sends)} (during the outage {len(sent_during)}), "
            f"uncertain {len(uncertain)}, producer retries {producer.retries}"
        )
        assert sent_during, "nothing was sent during the outage"
        assert len(uncertain) <= len(COMPANIES)  # at most the one in flight per company
        with psycopg.connect(database_url) as conn:
            clear = conn.execute(
                "SELECT count(*) FROM outbound_messages WHERE sealed IS NULL OR text <> ''"
            ).fetchone()
        assert clear == (0,)
