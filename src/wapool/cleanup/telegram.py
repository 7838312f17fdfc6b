"""The daily summary to Telegram through the Bot API's ``sendMessage``.

Sent from a thread with the standard library (one small POST a day needs no HTTP client
dependency), retried with backoff; a failed send is logged and never fails the cleanup. The
token is part of the URL, so neither the URL nor a raw exception text is ever logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

from wapool.backoff import Backoff
from wapool.settings import Settings

log = logging.getLogger(__name__)

MAX_TEXT = 4096  # Telegram's limit for one message


class TelegramNotifier:
    def __init__(
        self,
        api_url: str,
        token: str,
        chat_id: str,
        *,
        attempts: int = 4,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._url = f"{api_url.rstrip('/')}/bot{token}/sendMessage"
        self._chat_id = chat_id
        self._attempts = attempts
        self._timeout = timeout
        self._backoff = backoff or Backoff(base=1.0, cap=30.0)
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> TelegramNotifier | None:
        if settings.telegram_bot_token is None or not settings.telegram_chat_id:
            return None
        return cls(
            settings.telegram_api_url,
            settings.telegram_bot_token.get_secret_value(),
            settings.telegram_chat_id,
        )

    async def send(self, text: str) -> bool:
        """True once Telegram accepted the message; False after the last failed attempt."""
        self._backoff.reset()
        for attempt in range(1, self._attempts + 1):
            problem = await asyncio.to_thread(self._post, text[:MAX_TEXT])
            if problem is None:
                return True
            log.warning(
                "telegram_send_failed",
                extra={"attempt": attempt, "attempts": self._attempts, "error": problem},
            )
            if attempt < self._attempts:
                await self._sleep(self._backoff.next_delay())
        return False

    def _post(self, text: str) -> str | None:
        body = json.dumps({"chat_id": self._chat_id, "text": text}).encode()
        request = urllib.request.Request(  # noqa: S310 - the URL is the configured http(s) API
            self._url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                reply = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return type(exc).__name__
        return None if reply.get("ok") else "reply not ok"
