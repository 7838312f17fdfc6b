"""A tiny client of the /v1 API for tests: JSON in, (status, headers, JSON) out."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

TOKEN = "test-token-0123456789abcdef"


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = payload.decode(errors="replace")
        return exc.code, dict(exc.headers), parsed
    except (urllib.error.URLError, ConnectionError):
        return 0, {}, None  # nothing listens yet


def send(port: int, company: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    return call(port, "POST", f"/v1/companies/{company}/messages", body)


def send_accepted(
    port: int, company: str, body: dict[str, Any], timeout: float = 60
) -> dict[str, Any]:
    """Send, retrying while the daemon is not up or not accepting yet (no answer, 503)."""
    deadline = time.monotonic() + timeout
    while True:
        code, _, answer = send(port, company, body)
        if code == 202:
            return dict(answer)
        assert code in (0, 503), (code, answer)
        assert time.monotonic() < deadline, f"not accepted: {code} {answer}"
        time.sleep(0.2)


def wait_status(
    port: int, company: str, message_id: str, done: Callable[[str], bool], timeout: float = 30
) -> dict[str, Any]:
    """Poll the message's status until ``done(status)``; return the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        code, _, answer = call(port, "GET", f"/v1/companies/{company}/messages/{message_id}")
        if code == 200 and done(answer["status"]):
            return dict(answer)
        assert time.monotonic() < deadline, f"status not reached: {code} {answer}"
        time.sleep(0.05)
