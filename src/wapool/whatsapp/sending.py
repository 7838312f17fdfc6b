"""Sending through a client, as the port sees it: what to send, what came of it.

``Outcome`` is what wapool may conclude: ``sent`` (with WhatsApp's id), ``not_sent`` (failed
before anything could leave: not connected, not paired; the message waits for a connection),
``failed`` (WhatsApp refused it for good: not on WhatsApp, rate-overlimit, banned, bad media)
and ``uncertain`` (the send may have left: a timeout after the request went out, or an error we
cannot place). ``classify`` reads a backend's error text; anything it does not know is
``uncertain``, never a reason to send again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    SENT = "sent"
    NOT_SENT = "not_sent"
    FAILED = "failed"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class SendCommand:
    id: str
    to: str
    text: str = ""
    reply_to: str | None = None
    media: bytes | None = None
    mimetype: str | None = None
    filename: str | None = None


@dataclass(frozen=True)
class SendResult:
    id: str
    outcome: Outcome
    whatsapp_id: str | None = None
    reason: str | None = None


class SendFailure(Exception):
    """A backend's send failed with a known outcome (``reason`` is shown to the producer)."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


#: (pattern in the error text, outcome, reason shown). First match wins.
_RULES: tuple[tuple[str, Outcome, str], ...] = (
    (r"client is nil|not connected|websocket not connected|no connection",
     Outcome.NOT_SENT, "not_connected"),
    (r"doesn't contain a device jid|not logged in|ErrNotLoggedIn", Outcome.NOT_SENT, "not_paired"),
    (r"rate-overlimit|\b429\b|rate overlimit", Outcome.FAILED, "rate_overlimit"),
    (r"not on whatsapp|no devices|not-authorized.*user|\b404\b.*user", Outcome.FAILED,
     "not_on_whatsapp"),
    (r"\bbanned\b|temporar(y|ily) ban|\b403\b", Outcome.FAILED, "banned"),
)  # fmt: skip


def classify(error: str) -> SendFailure:
    """The outcome of a send that raised ``error`` (its text)."""
    for pattern, outcome, reason in _RULES:
        if re.search(pattern, error, re.IGNORECASE):
            return SendFailure(outcome, f"{reason}: {error}"[:500])
    return SendFailure(Outcome.UNCERTAIN, f"send error, it may have left: {error}"[:500])
