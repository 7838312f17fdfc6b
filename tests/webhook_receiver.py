"""A local webhook receiver for tests (aiohttp): verifies signatures, records what arrived, and
misbehaves on request for chosen chats (500, a hang past the timeout, a closed socket)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from wapool.devdb import free_port
from wapool.messaging import signing


@dataclass
class Receiver:
    secret: bytes
    url: str = ""
    #: Accepted events in arrival order: (event id, body).
    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    attempts: int = 0
    bad_signatures: int = 0
    #: chat -> "500" | "hang" | "close": how to treat that chat's deliveries.
    misbehave: dict[str, str] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def ids(self) -> set[str]:
        return {i for i, _ in self.accepted}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        body = await request.read()
        ok = signing.verify(
            self.secret, request.headers.get(signing.TIMESTAMP, ""), body,
            request.headers.get(signing.SIGNATURE, ""),
        )  # fmt: skip
        if not ok:
            self.bad_signatures += 1
            return web.Response(status=401)
        event = json.loads(body)
        how = self.misbehave.get(event.get("chat", ""))
        if how == "500":
            return web.Response(status=500)
        if how == "hang":
            await asyncio.sleep(3600)
        if how == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        assert request.headers[signing.EVENT_ID] == event["id"]
        self.accepted.append((event["id"], event))
        self.arrived.set()
        return web.Response(status=204)


@asynccontextmanager
async def receiving(secret: bytes = b"test-secret") -> AsyncIterator[Receiver]:
    receiver = Receiver(secret)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
