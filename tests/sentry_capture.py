"""A Sentry transport that keeps envelopes in memory, for tests (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from wapool.observability.sentry import init_sentry
from wapool.settings import Settings


class CapturingTransport(Transport):
    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            payload = item.get_event()
            if payload is not None:
                self.events.append(payload)

    def messages(self, message: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("message") == message or
                e.get("logentry", {}).get("message") == message]  # fmt: skip


@pytest.fixture
def sentry_events(settings: Settings) -> Iterator[CapturingTransport]:
    transport = CapturingTransport()
    init_sentry(settings, transport=transport)
    yield transport
    sentry_sdk.flush()
    sentry_sdk.init(dsn=None)
