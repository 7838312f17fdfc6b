"""The loopback HTTP endpoint: /healthz, /readyz, /metrics (Prometheus text), /status (JSON).

A deliberately small HTTP/1.1 server on asyncio (GET only, bounded request size and time,
one response per connection): it must answer even when everything else is struggling.
Nothing it serves contains a secret: it renders the daemon's own counters and states. It does
show paired phone numbers and state paths and has no authentication, so binding it to anything
but loopback (``WAPOOL_HTTP_ADDR``) is logged as a warning at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host``: a loopback address or ``localhost``."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


@dataclass(frozen=True)
class Endpoints:
    ready: Callable[[], tuple[bool, str]]
    metrics: Callable[[], str]
    status: Callable[[], dict[str, Any]]


class HttpServer:
    def __init__(self, host: str, port: int, endpoints: Endpoints) -> None:
        self._host, self._port = host, port
        self._endpoints = endpoints
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("http_listening", extra={"address": f"{self._host}:{self.port}"})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            if len(head) > MAX_REQUEST:
                raise ValueError("request too large")
            method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, content_type, body = self._route(method, target.split("?", 1)[0])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, content_type, body = 400, "text/plain", "bad request\n"
        except Exception:
            log.exception("http_handler_failed")
            status, content_type, body = 500, "text/plain", "internal error\n"
        payload = body.encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  500: "Internal Server Error", 503: "Service Unavailable"}[status]  # fmt: skip
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _route(self, method: str, path: str) -> tuple[int, str, str]:
        if method != "GET":
            return 405, "text/plain", "GET only\n"
        if path == "/healthz":
            return 200, "text/plain", "ok\n"
        if path == "/readyz":
            ready, why = self._endpoints.ready()
            return (200 if ready else 503), "text/plain", f"{why}\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self._endpoints.metrics()
        if path == "/status":
            return 200, "application/json", json.dumps(self._endpoints.status(), indent=2) + "\n"
        return 404, "text/plain", "not found\n"
