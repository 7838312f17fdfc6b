"""The /v1 API on a real daemon (simulated backend, simulated WhatsApp server, real
PostgreSQL): a message reaches the simulated contact once, its status moves, an idempotency
key never sends twice, a producer's row in outbound_messages is claimed and sent, and every
malformed request gets its own clear answer (400 naming the field, 401, 404, 405, 413)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.api_client import TOKEN, call, send, wait_status
from tests.conftest import run_cli
from tests.daemon import Daemon, Daemons
from tests.simserver import running_sim_server
from wapool.whatsapp.sim_messages import ECHO_JID

pytestmark = pytest.mark.timeout(120)
ECHO_PHONE = "+" + ECHO_JID.split("@")[0]


def _env(url: str, tmp_path: Path, socket: Path, **extra: str) -> dict[str, str]:
    return {
        "WAPOOL_DATABASE_URL": url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_SIMULATED_SERVER": str(socket),
        "WAPOOL_SIMULATED_CHURN_PER_SECOND": "0",
        "WAPOOL_API_TOKENS": f"another-token-000000000,{TOKEN}",
        "WAPOOL_SEND_PER_MINUTE": "600",
        "WAPOOL_SEND_BURST": "20",
        **extra,
    }


def _until_accepting(daemon: Daemon, company: str, timeout: float = 60) -> None:
    """The daemon drives the company and has adopted its rows (no 503 any more)."""
    deadline = time.monotonic() + timeout
    probe = f"/v1/companies/{company}/messages/00000000-0000-0000-0000-000000000000/retry"
    while True:
        code, _, _ = call(daemon.port or 0, "POST", probe)
        if code == 404:
            status = json.loads(daemon.get("/status")[1] or "{}")
            if status.get("companies", {}).get(company, {}).get("state") == "connected":
                return
        assert time.monotonic() < deadline, f"{company} not accepting: {code}"
        time.sleep(0.1)


def _wait_inbound(url: str, quoted: str, timeout: float = 30) -> Any:
    """The echo contact's answer to the message WhatsApp knows as ``quoted``."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT sender_jid, kind, body FROM inbound_messages "
                "WHERE event->>'quoted_id' = %s",
                (quoted,),
            ).fetchone()
        if row is not None:
            return row
        assert time.monotonic() < deadline, "the echo answer is not in inbound_messages"
        time.sleep(0.1)


def _pg_status(url: str, message_id: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT status, whatsapp_id, claimed_by FROM outbound_messages WHERE id::text = %s",
            (message_id,),
        ).fetchone()


def _wait_pg(url: str, message_id: str, statuses: set[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while (row := _pg_status(url, message_id)) is None or row[0] not in statuses:
        assert time.monotonic() < deadline, f"PostgreSQL row: {row}"
        time.sleep(0.1)
    return row


def test_send_through_the_api_and_through_sql(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme')")
    with running_sim_server(tmp_path) as server:
        daemon = daemons.start(_env(database_url, tmp_path, server.socket))
        port = daemon.port or 0
        _until_accepting(daemon, "acme")

        code, headers, first = send(port, "acme", {"to": ECHO_PHONE, "text": "hello",
                                                   "idempotency_key": "order-1"})  # fmt: skip
        assert code == 202, first
        assert first["status"] in ("queued", "sending", "sent")
        assert first["to"] == ECHO_JID
        assert "Idempotent-Replayed" not in headers
        read = wait_status(port, "acme", first["id"], lambda s: s == "read")
        assert read["whatsapp_id"]
        echo = _wait_inbound(database_url, read["whatsapp_id"])
        assert echo == (ECHO_JID, "text", "echo: hello")
        code, headers, again = send(port, "acme", {"to": ECHO_PHONE, "text": "other text",
                                                   "idempotency_key": "order-1"})  # fmt: skip
        assert (code, again["id"], headers.get("Idempotent-Replayed")) == (202, first["id"], "true")
        assert _wait_pg(database_url, first["id"], {"sent", "delivered", "read"})[1]

        with psycopg.connect(database_url, autocommit=True) as conn:
            produced = conn.execute(
                "INSERT INTO outbound_messages (company_id, to_jid, text, idempotency_key) "
                "VALUES ('acme', %s, 'from SQL', 'sql-1') RETURNING id::text",
                (ECHO_JID,),
            ).fetchone()
        assert produced is not None
        row = _wait_pg(database_url, produced[0], {"sent", "delivered", "read"})
        assert row[2] == daemon_node(daemon)
        via_api = wait_status(port, "acme", produced[0], lambda s: s != "queued")
        assert via_api["idempotency_key"] == "sql-1"

        image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()
        code, _, media = send(port, "acme", {"to": ECHO_JID, "media": {
            "data": image, "mimetype": "image/png", "filename": "p.png", "caption": "look"}})  # fmt: skip
        assert code == 202
        wait_status(port, "acme", media["id"], lambda s: s in ("sent", "delivered", "read"))
        code, _, refused = send(port, "acme", {"to": "+999 1234 5678", "text": "nobody"})
        failed = wait_status(port, "acme", refused["id"], lambda s: s == "failed")
        assert failed["reason"].startswith("not_on_whatsapp")

        env = {"WAPOOL_DATABASE_URL": database_url}
        cli = [run_cli("send", "acme", ECHO_PHONE, "via cli", "--key", "cli-1", "--wait",
                       env=env) for _ in range(2)]  # fmt: skip
        for result in cli:
            assert result.returncode == 0, result.stderr
            lines = result.stdout.splitlines()
            assert lines[0].startswith("message ")
            assert lines[-1].startswith("read 3EB0")
        assert cli[0].stdout.splitlines()[0] == cli[1].stdout.splitlines()[0]  # one message
        listed = run_cli("messages", "acme", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        out = [json.loads(line) for line in listed.stdout.splitlines()]
        mine = {r["message_id"]: r for r in out if r["direction"] == "out"}
        assert mine[first["id"]]["status"] == "read"
        assert mine[refused["id"]]["status"] == "failed"
        assert any(r["direction"] == "in" and r["text"] == "echo: hello" for r in out)
        bad = run_cli("send", "acme", "not-a-number", "x", env=env)
        assert bad.returncode == 1
        assert "TO must be a phone number" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        assert run_cli("send", "nope", ECHO_PHONE, "x", env=env).returncode == 1

        read_path = "/v1/companies/acme/read"
        code, _, marked = call(port, "POST", read_path, {"chat": ECHO_JID,
                                                         "message_ids": ["3EB0AA", "3EB0BB"]})  # fmt: skip
        assert (code, marked) == (202, {"marked": 2})
        code, _, answer = call(port, "POST", read_path, {"chat": ECHO_JID, "message_ids": []})
        assert (code, answer["error"]["field"]) == (400, "message_ids")
        code, _, answer = call(port, "POST", read_path, {"chat": "x", "message_ids": ["A"]})
        assert (code, answer["error"]["field"]) == (400, "chat")

        stats = server.stats()
        assert stats["duplicates"] == []
        assert stats["received"][ECHO_JID] == 4  # api, sql, media, cli: each once


def daemon_node(daemon: Daemon) -> str:
    return str(json.loads(daemon.get("/status")[1])["node"])


BAD: list[tuple[Any, str]] = [
    ({"text": "x"}, "to"),
    ({"to": 491701234567, "text": "x"}, "to"),
    ({"to": "not a number", "text": "x"}, "to"),
    ({"to": "x@example.com", "text": "x"}, "to"),
    ({"to": "491701234567"}, "text"),
    ({"to": "491701234567", "text": ""}, "text"),
    ({"to": "491701234567", "text": 5}, "text"),
    ({"to": "491701234567", "text": "x" * 70_000}, "text"),
    ({"to": "491701234567", "text": "x", "colour": "red"}, "colour"),
    ({"to": "491701234567", "media": "abc"}, "media"),
    ({"to": "491701234567", "media": {"data": "%%%", "mimetype": "image/png"}}, "media.data"),
    ({"to": "491701234567", "media": {"data": "", "mimetype": "image/png"}}, "media.data"),
    ({"to": "491701234567", "media": {"data": "aGk="}}, "media.mimetype"),
    ({"to": "491701234567", "media": {"data": "aGk=", "mimetype": "png"}}, "media.mimetype"),
    (
        {
            "to": "491701234567",
            "media": {"data": "aGk=", "mimetype": "image/png", "filename": "../etc/passwd"},
        },
        "media.filename",
    ),
    (
        {"to": "491701234567", "media": {"data": "aGk=", "mimetype": "image/png", "url": "x"}},
        "media.url",
    ),
    (
        {"to": "491701234567", "text": "x", "media": {"data": "aGk=", "mimetype": "image/png"}},
        "text",
    ),
    ({"to": "491701234567", "text": "x", "idempotency_key": ""}, "idempotency_key"),
    ({"to": "491701234567", "text": "x", "idempotency_key": "k" * 201}, "idempotency_key"),
    ({"to": "491701234567", "text": "x", "reply_to": "no spaces allowed"}, "reply_to"),
    ({"to": "491701234567", "text": "x", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    ({"to": "491701234567", "text": "x", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
    ({"to": "491701234567", "text": "x", "expires_at": "soon"}, "expires_at"),
    ({"to": "491701234567", "text": "x", "expires_at": True}, "expires_at"),
    ([1, 2], "body"),
    ("just a string", "body"),
]


def test_every_bad_request_gets_its_answer(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme'), ('elsewhere')")
        conn.execute("INSERT INTO company_leases VALUES ('elsewhere', 'node-b', 1, "
                     "now() + interval '1 hour')")  # fmt: skip
    with running_sim_server(tmp_path) as server:
        env = _env(database_url, tmp_path, server.socket, WAPOOL_API_MAX_BODY_MB="0.1")
        daemon = daemons.start(env)
        port = daemon.port or 0
        _until_accepting(daemon, "acme")
        path = "/v1/companies/acme/messages"
        for body, field in BAD:
            code, _, answer = call(port, "POST", path, body)
            assert (code, answer["error"]["field"]) == (400, field), (body, answer)
        code, _, answer = call(port, "POST", path, raw=b"{not json")
        assert (code, answer["error"]["field"]) == (400, "body")
        code, _, answer = call(port, "POST", path, raw=b'{"to": "\xff"}')
        assert (code, answer["error"]["field"]) == (400, "body")

        ok = {"to": "491701234567", "text": "x"}
        assert call(port, "POST", path, ok, token=None)[0] == 401
        code, headers, _ = call(port, "POST", path, ok, token="wrong-token-0123456789")
        assert code == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert call(port, "POST", path, ok, token=TOKEN[:-1])[0] == 401
        assert call(port, "GET", path.replace("acme", "nope") + "/x")[0] == 404
        assert call(port, "POST", "/v1/companies/nope/messages", ok)[0] == 404
        assert call(port, "POST", "/v1/companies/Bad!Id/messages", ok)[0] == 404
        assert call(port, "GET", path + "/00000000-0000-0000-0000-000000000000")[0] == 404
        assert call(port, "DELETE", path)[0] == 405
        code, headers, answer = call(port, "POST", "/v1/companies/elsewhere/messages", ok)
        assert code == 503
        assert answer["error"]["node"] == "node-b"
        assert headers["Retry-After"]
        assert headers["X-Wapool-Node"] == "node-b"
        code, _, answer = call(port, "POST", path, {**ok, "text": "y" * 120_000})
        assert (code, answer["error"]["code"]) == (413, "too_large")
        assert call(port, "GET", "/v1/other")[0] == 404

        with psycopg.connect(database_url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM outbound_messages").fetchone() == (0,)
        assert server.stats()["sends"] == {}
        daemon.stop()
        text = daemon.text()
        assert TOKEN not in text
        assert "y" * 100 not in text


def test_without_tokens_the_api_is_off(database_url: str, tmp_path: Path, daemons: Daemons) -> None:
    env = _env(database_url, tmp_path, tmp_path / "none.sock")
    del env["WAPOOL_API_TOKENS"], env["WAPOOL_SIMULATED_SERVER"]
    daemon = daemons.start(env)
    daemon.wait_for("event=http_listening")
    code, _, answer = call(daemon.port or 0, "POST", "/v1/companies/acme/messages", {})
    assert (code, answer["error"]["code"]) == (404, "api_off")
    assert "WAPOOL_API_TOKENS" in answer["error"]["message"]
    assert daemon.get("/healthz") == (200, "ok\n")
