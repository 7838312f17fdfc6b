"""What the simulated WhatsApp server does with a sent message: receipts, and the echo contact.

After a send is acknowledged, the recipient's ``delivered`` and then ``read`` receipts come back
after the configured delays, pushed to whichever connection drives the sending device by then
(kept while it is offline, pushed at its next connect, as WhatsApp's offline queue does).
A message to ``ECHO_JID`` is answered: ``echo: <text>``, quoting it, as an inbound message
(kept for the device while it is offline, like the receipts).

Pushes (server -> client), one JSON object per line:
    receipt {ids, chat, status, ts}                    status: delivered | read
    message {id, chat, sender, text, quoted, ts}        an inbound message
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The built-in contact that answers every message (staging, drills, benchmarks, tests).
ECHO_JID = "10000000000@s.whatsapp.net"


def whatsapp_id() -> str:
    """A message id shaped like whatsmeow's (``3EB0`` and hex)."""
    return "3EB0" + secrets.token_hex(10).upper()


@dataclass
class Delays:
    delivered: float = 0.05
    read: float | None = 0.2
    echo: float = 0.05

    @classmethod
    def parse(cls, receipts: str, echo: float) -> Delays:
        """``receipts``: ``DELIVERED[,READ]`` seconds (no READ: no read receipts)."""
        parts = [p for p in receipts.split(",") if p.strip()]
        if not 1 <= len(parts) <= 2:
            raise ValueError("receipt delays: DELIVERED[,READ] seconds")
        values = [float(p) for p in parts]
        if any(v < 0 for v in values) or echo < 0:
            raise ValueError("delays cannot be negative")
        return cls(values[0], values[1] if len(values) > 1 else None, echo)


@dataclass
class Deliveries:
    """Schedules pushes for devices; ``push`` writes to a device's live connection if any and
    returns False when it has none (the line is then kept for its next connect)."""

    push: Callable[[str, bytes], bool]
    encode: Callable[..., bytes]
    clock: Callable[[], float]
    delays: Delays = field(default_factory=Delays)
    offline: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    echoes: int = 0

    def sent(self, device: str, fields: dict[str, Any], wa_id: str) -> None:
        """A message left ``device`` and was acknowledged as ``wa_id``."""
        loop = asyncio.get_running_loop()
        to = str(fields["to"])

        def receipt(status: str) -> Callable[[], None]:
            return lambda: self._deliver(device, self.encode(
                "receipt", ids=[wa_id], chat=to, status=status, ts=self.clock()))  # fmt: skip

        loop.call_later(self.delays.delivered, receipt("delivered"))
        if self.delays.read is not None:
            loop.call_later(max(self.delays.read, self.delays.delivered), receipt("read"))
        if to == ECHO_JID:
            text = f"echo: {fields.get('body', '')}"
            loop.call_later(self.delays.echo, lambda: self._echo(device, text, wa_id))

    def _echo(self, device: str, text: str, quoted: str) -> None:
        self.echoes += 1
        self._deliver(device, self.encode(
            "message", id=whatsapp_id(), chat=ECHO_JID, sender=ECHO_JID, text=text,
            quoted=quoted, ts=self.clock(),
        ))  # fmt: skip

    def _deliver(self, device: str, line: bytes) -> None:
        if not self.push(device, line):
            self.offline[device].append(line)

    def connected(self, device: str) -> None:
        """``device`` has a live connection again: hand it what waited."""
        waiting = self.offline.pop(device, [])
        for line in waiting:
            if not self.push(device, line):
                self.offline[device].append(line)
