"""The port every WhatsApp backend implements (neonize, simulated).

A client drives one company's session on its working store. It reports through ``emit``, which
it may call from any thread; the host hands events on to the supervisor. ``start`` returns at
once (the connection runs in the background); ``stop`` is bounded and says whether the client
really stopped (if not, the host process must be recycled).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from wapool.messaging.model import InboundEvent
from wapool.whatsapp.events import WhatsAppEvent
from wapool.whatsapp.sending import SendCommand, SendResult

#: What a client reports: session events, and inbound messages and receipts. The host writes an
#: ``InboundEvent`` to the company's inbox before ``emit`` returns (so a client calls it from its
#: event handler, before that handler returns to the library).
ClientEvent = WhatsAppEvent | InboundEvent
Emit = Callable[[ClientEvent], None]


class WhatsAppClient(Protocol):
    company_id: str

    def start(self) -> None:
        """Connect in the background (pairing by QR if the store holds no device)."""

    def stop(self, timeout: float) -> bool:
        """Disconnect; False if the backend did not stop within ``timeout`` seconds."""

    def logout(self) -> None:
        """Log the device out (whatsmeow then deletes its keys)."""

    def pair_phone(self, phone: str) -> str:
        """Ask for a pair code for ``phone``; only while connecting/connected."""

    def send(self, command: SendCommand) -> SendResult:
        """Send one message (blocking; never raises: failures are a ``SendResult``)."""

    def mark_read(self, chat: str, sender: str, message_ids: list[str]) -> None:
        """Send read receipts for these inbound messages (blocking; raises on failure)."""


class Backend(Protocol):
    def client(self, company_id: str, store: Path, emit: Emit) -> WhatsAppClient:
        """A client for ``company_id`` working on ``store``."""

    def crash_process(self, store: Path | None) -> None:
        """Kill the hosting process the way this backend can (drills: worker isolation)."""
