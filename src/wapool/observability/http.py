"""The daemon's HTTP server (aiohttp): /healthz, /readyz, /metrics (Prometheus text), /status
(JSON), and the token-protected /v1 messaging API when it is configured (``messaging.api``).

The operator views answer GET only and render the daemon's own counters and states: nothing
secret, but they show paired phone numbers and state paths without authentication, so binding
to anything but loopback (``WAPOOL_HTTP_ADDR``) is logged as a warning at start. Requests are
bounded in size and time; no access log (it would hold the API's paths at every request).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


class Routes(Protocol):
    def install(self, app: web.Application) -> None: ...


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
    def __init__(
        self, host: str, port: int, endpoints: Endpoints, api: Routes | None = None,
        max_body: int = MAX_REQUEST,
    ) -> None:  # fmt: skip
        self._host, self._port = host, port
        self._endpoints = endpoints
        self._api = api
        self._max_body = max_body
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        assert self._runner is not None
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        app = web.Application(client_max_size=self._max_body + MAX_REQUEST,
                              middlewares=[_plain_errors])  # fmt: skip
        views: dict[str, Callable[[], web.Response]] = {
            "/healthz": lambda: _text(200, "ok\n"),
            "/readyz": self._ready,
            "/metrics": lambda: _text(200, self._endpoints.metrics(), "text/plain; version=0.0.4"),
            "/status": lambda: web.json_response(
                self._endpoints.status(), dumps=lambda v: json.dumps(v, indent=2) + "\n"
            ),
        }
        for path, view in views.items():
            app.router.add_route("*", path, _get_only(view))
        if self._api is not None:
            self._api.install(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)  # fmt: skip
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("http_listening", extra={"address": f"{self._host}:{self.port}"})

    async def close(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()

    def _ready(self) -> web.Response:
        ready, why = self._endpoints.ready()
        return _text(200 if ready else 503, f"{why}\n")


def _text(status: int, body: str, content_type: str = "text/plain") -> web.Response:
    response = web.Response(status=status, text=body)
    response.headers["Content-Type"] = content_type
    return response


def _get_only(view: Callable[[], web.Response]) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _text(405, "GET only\n")
        return view()

    return handle


@web.middleware
async def _plain_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown paths and failures answer briefly, in plain text; never a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status == 404:
            return _text(404, "not found\n")
        if exc.status == 413:
            return _text(413, "request too large\n")
        raise
    except Exception:
        log.exception("http_handler_failed")
        return _text(500, "internal error\n")
