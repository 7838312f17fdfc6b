"""An echo bot: a webhook receiver that answers WhatsApp messages through wapool's API.

What a bot built on wapool looks like, small enough to copy:

    ECHO_BOT_WEBHOOK_SECRET=... ECHO_BOT_API_TOKEN=... python examples/echo_bot.py

and point wapool at it: ``WAPOOL_WEBHOOK_URL=http://127.0.0.1:8088/webhook`` with the same
``WAPOOL_WEBHOOK_SECRET``, and ``WAPOOL_API_TOKENS`` holding the bot's token.

For each delivery it

1. checks the signature (HMAC-SHA256 over ``<timestamp>.<raw body>``, constant-time) and that
   the timestamp is within five minutes, else answers 401;
2. answers every text message from a contact (not its own, not in a group) with
   ``You said: <text>``, quoting it; a message that itself quotes another is not answered, so
   two bots (or wapool's simulated echo contact) never answer each other forever;
3. sends through ``POST /v1/companies/{company}/messages`` with the event id as the
   idempotency key: wapool delivers a webhook at least once, and a redelivered event then
   returns the first answer instead of sending a second one;
4. answers 204 only once wapool accepted the answer (202); otherwise 503, and wapool delivers
   the event again later.

Settings (environment): ``ECHO_BOT_LISTEN`` (``127.0.0.1:8088``), ``ECHO_BOT_API_URL``
(``http://127.0.0.1:8787``), ``ECHO_BOT_API_TOKEN``, ``ECHO_BOT_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

log = logging.getLogger("echo_bot")
MAX_SKEW = 300


def signed(secret: bytes, request_headers: Any, body: bytes) -> bool:
    timestamp = request_headers.get("X-Wapool-Timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_SKEW:
        return False
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={digest}", request_headers.get("X-Wapool-Signature", ""))


def answer_to(event: dict[str, Any]) -> str | None:
    """The reply to an event, or None when the bot stays silent."""
    if event.get("type") != "message" or event.get("kind") != "text":
        return None
    if event.get("from_me") or event.get("is_group") or event.get("quoted_id"):
        return None
    return f"You said: {event.get('text', '')}"


class Bot:
    def __init__(self, api_url: str, token: str, secret: bytes) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.secret = secret
        self.session: ClientSession | None = None

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not signed(self.secret, request.headers, body):
            return web.Response(status=401, text="bad signature\n")
        event = json.loads(body)
        text = answer_to(event)
        if text is None:
            return web.Response(status=204)
        reply = {"to": event["chat"], "text": text, "reply_to": event["message_id"],
                 "idempotency_key": f"echo-{event['id']}"}  # fmt: skip
        assert self.session is not None
        url = f"{self.api_url}/v1/companies/{event['company']}/messages"
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with self.session.post(url, json=reply, headers=headers) as response:
                if response.status == 202:
                    return web.Response(status=204)
                log.warning("api_refused status=%s", response.status)
        except OSError as exc:
            log.warning("api_unreachable error=%s", exc)
        return web.Response(status=503, text="try again later\n")

    async def start(self, _app: web.Application) -> None:
        self.session = ClientSession(timeout=ClientTimeout(total=10))

    async def stop(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host, port = os.environ.get("ECHO_BOT_LISTEN", "127.0.0.1:8088").rsplit(":", 1)
    bot = Bot(
        os.environ.get("ECHO_BOT_API_URL", "http://127.0.0.1:8787"),
        os.environ["ECHO_BOT_API_TOKEN"],
        os.environ["ECHO_BOT_WEBHOOK_SECRET"].encode(),
    )
    app = web.Application()
    app.router.add_post("/webhook", bot.webhook)
    app.on_startup.append(bot.start)
    app.on_cleanup.append(bot.stop)
    log.info("listening on %s:%s", host, port)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
