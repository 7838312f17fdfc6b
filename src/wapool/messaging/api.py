"""The /v1 HTTP API (aiohttp): accept a message, tell its status, retry an uncertain one.

    POST /v1/companies/{id}/messages                    -> 202 {id, status, ...}
    GET  /v1/companies/{id}/messages/{message_id}       -> 200 {id, status, whatsapp_id, ...}
    POST /v1/companies/{id}/messages/{message_id}/retry -> 202 (only ``uncertain``/``failed``)

Every request needs ``Authorization: Bearer <token>`` (one of ``WAPOOL_API_TOKENS``, compared
in constant time); without tokens configured the routes answer 404 saying the API is off.
Errors have one shape: ``{"error": {"code", "message", "field"?}}``. Bodies are bounded
(413), read only after the token and the company were checked, and never logged; a company
this daemon does not drive gets 503 with ``Retry-After`` and the driving node's name.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from wapool.errors import InvalidCompanyId
from wapool.messaging.outbound import Outbound, Record
from wapool.messaging.request import FieldError, parse_read, parse_send
from wapool.registry.company import validate_company_id


@dataclass(frozen=True)
class Elsewhere:
    """A company this daemon does not drive: who does (None: nobody yet, or unknown)."""

    node: str | None
    why: str


class Service(Protocol):
    """What the API needs from the daemon (``messaging.service``)."""

    def drives(self, company: str) -> bool | None:
        """True: accepting; None: taking over, soon; False: not this daemon."""

    async def elsewhere(self, company: str) -> Elsewhere | None:
        """Who drives a company this daemon does not; None: no such company."""

    async def accept(self, message: Outbound) -> tuple[Record, bool]: ...

    async def find(self, company: str, message_id: str) -> Record | None: ...

    async def retry(self, company: str, message_id: str) -> Record | None: ...

    async def mark_read(self, company: str, chat: str, sender: str, ids: list[str]) -> bool:
        """Send read receipts; False when the session is not connected."""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str, field: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:  # fmt: skip
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response({"error": body}, status=status, headers=headers)


class Api:
    def __init__(self, service: Service, tokens: list[bytes], max_body_bytes: int) -> None:
        self._service = service
        self._tokens = tokens
        self._max_body = max_body_bytes
        self.requests = 0
        self.rejected: dict[int, int] = {}

    def install(self, app: web.Application) -> None:
        base = "/v1/companies/{company}/messages"
        app.router.add_route("*", base, self._guard(self._post, "POST"))
        app.router.add_route("*", base + "/{message_id}", self._guard(self._get, "GET"))
        app.router.add_route("*", base + "/{message_id}/retry", self._guard(self._retry, "POST"))
        app.router.add_route("*", "/v1/companies/{company}/read", self._guard(self._read, "POST"))
        app.router.add_route("*", "/v1/{tail:.*}", self._guard(self._unknown, "*"))

    def _guard(self, handler: Handler, method: str) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self.requests += 1
            response = self._refuse(request, method) or await handler(request)
            if response.status >= 400:
                self.rejected[response.status] = self.rejected.get(response.status, 0) + 1
            return response

        return guarded

    def _refuse(self, request: web.Request, method: str) -> web.Response | None:
        if not self._tokens:
            return error(404, "api_off", "the /v1 API is off: set WAPOOL_API_TOKENS to turn it on")
        header = request.headers.get("Authorization", "")
        given = header[7:].strip().encode() if header[:7].lower() == "bearer " else b""
        matched = False
        for token in self._tokens:  # every token compared, in constant time
            matched |= hmac.compare_digest(given, token)
        if not matched:
            return error(401, "unauthorized", "a valid bearer token is required",
                         headers={"WWW-Authenticate": 'Bearer realm="wapool"'})  # fmt: skip
        if method != "*" and request.method != method:
            return error(405, "method_not_allowed", f"use {method}",
                         headers={"Allow": method})  # fmt: skip
        return None

    async def _company(self, request: web.Request) -> tuple[str, web.Response | None]:
        company = request.match_info["company"]
        try:
            validate_company_id(company)
        except InvalidCompanyId:
            return company, error(404, "unknown_company", "no such company")
        drives = self._service.drives(company)
        if drives:
            return company, None
        if drives is None:
            return company, error(503, "taking_over", "this daemon is taking the company over",
                                  headers={"Retry-After": "1"})  # fmt: skip
        where = await self._service.elsewhere(company)
        if where is None:
            return company, error(404, "unknown_company", "no such company")
        headers = {"Retry-After": "5"}
        if where.node:
            headers["X-Wapool-Node"] = where.node
        body = {"error": {"code": "not_driving", "message": where.why, "node": where.node}}
        return company, web.json_response(body, status=503, headers=headers)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        company, data = await self._json(request)
        if isinstance(data, web.Response):
            return data
        try:
            message = parse_send(company, data, time.time())
        except FieldError as exc:
            return error(400, "bad_field", exc.message, field=exc.field)
        record, new = await self._service.accept(message)
        headers = {} if new else {"Idempotent-Replayed": "true"}
        return web.json_response(record.public(), status=202, headers=headers)

    async def _json(self, request: web.Request) -> tuple[str, Any]:
        """The company a request names and its parsed JSON body, or the response refusing it."""
        company, refused = await self._company(request)
        if refused is not None:
            return company, refused
        raw = await self._body(request)
        if isinstance(raw, web.Response):
            return company, raw
        try:
            return company, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return company, error(400, "bad_json", "the body is not JSON", field="body")

    async def _body(self, request: web.Request) -> bytes | web.Response:
        if request.content_length is not None and request.content_length > self._max_body:
            return self._too_big()
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self._max_body:
                return self._too_big()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_big(self) -> web.Response:
        return error(413, "too_large", f"the body is over {self._max_body} bytes")

    async def _get(self, request: web.Request) -> web.StreamResponse:
        company = request.match_info["company"]
        try:
            validate_company_id(company)
        except InvalidCompanyId:
            return error(404, "unknown_company", "no such company")
        record = await self._service.find(company, request.match_info["message_id"])
        if record is None:
            return error(404, "unknown_message", "no such message for this company")
        return web.json_response(record.public())

    async def _retry(self, request: web.Request) -> web.StreamResponse:
        company, refused = await self._company(request)
        if refused is not None:
            return refused
        message_id = request.match_info["message_id"]
        record = await self._service.retry(company, message_id)
        if record is None:
            known = await self._service.find(company, message_id)
            if known is None:
                return error(404, "unknown_message", "no such message for this company")
            return error(409, "not_retryable",
                         f"only uncertain or failed messages are retried; this one is "
                         f"{known.status.value}")  # fmt: skip
        return web.json_response(record.public(), status=202)

    async def _read(self, request: web.Request) -> web.StreamResponse:
        company, data = await self._json(request)
        if isinstance(data, web.Response):
            return data
        try:
            chat, sender, ids = parse_read(data)
        except FieldError as exc:
            return error(400, "bad_field", exc.message, field=exc.field)
        if not await self._service.mark_read(company, chat, sender, ids):
            return error(409, "not_connected", "the company's session is not connected")
        return web.json_response({"marked": len(ids)}, status=202)

    async def _unknown(self, _request: web.Request) -> web.StreamResponse:
        return error(404, "not_found", "no such route")
