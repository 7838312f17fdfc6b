"""An outbound message as wapool keeps it, its statuses, and how a recipient is written.

Statuses move forward only: ``queued`` -> ``sending`` -> ``sent`` -> ``delivered`` -> ``read``;
``failed`` (with a reason) and ``uncertain`` (it may have left before a kill: never repeated
unless the producer asks) end a message's way. ``sending`` is durable before the worker is asked
to send, which is what makes a kill visible as ``uncertain`` instead of a silent second send.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    UNCERTAIN = "uncertain"


#: Receipts only move a message forward along this order.
PROGRESS = {Status.SENT: 1, Status.DELIVERED: 2, Status.READ: 3}
#: Statuses a message does not leave by itself.
FINAL = frozenset({Status.SENT, Status.DELIVERED, Status.READ, Status.FAILED, Status.UNCERTAIN})

_PHONE = re.compile(r"^\+?[0-9][0-9 ()-]{5,24}$")
_JID = re.compile(r"^[0-9A-Za-z._:-]{1,64}@(s\.whatsapp\.net|g\.us|lid|newsletter|broadcast)$")


def recipient_jid(to: str) -> str:
    """A phone number (``+49 170 1234567``) or a JID, as the JID to send to; ValueError else."""
    value = to.strip()
    if "@" in value:
        if not _JID.match(value):
            raise ValueError(
                "must be a phone number or a JID like 491701234567@s.whatsapp.net or 1203630@g.us"
            )
        return value
    if not _PHONE.match(value):
        raise ValueError("must be a phone number (7 to 15 digits, optional +) or a JID")
    digits = re.sub(r"[^0-9]", "", value)
    if not 7 <= len(digits) <= 15:
        raise ValueError("must be a phone number (7 to 15 digits, optional +) or a JID")
    return f"{digits}@s.whatsapp.net"


def new_message_id() -> str:
    return str(uuid.uuid4())


def media_kind(mimetype: str) -> str:
    """How WhatsApp carries a file of this type: image, video, audio or document."""
    major = mimetype.split("/", 1)[0].lower()
    return major if major in ("image", "video", "audio") else "document"


@dataclass(frozen=True)
class Media:
    data: bytes
    mimetype: str
    filename: str | None = None

    @property
    def kind(self) -> str:
        return media_kind(self.mimetype)


@dataclass(frozen=True)
class Outbound:
    """What a producer asked to send (the API's request, or a row of ``outbound_messages``)."""

    company: str
    to: str
    #: The text, or a media message's caption.
    text: str = ""
    reply_to: str | None = None
    media: Media | None = None
    idempotency_key: str | None = None
    #: Unix time after which an unsent message fails instead of waiting for a connection.
    expires_at: float | None = None
    id: str = field(default_factory=new_message_id)
    origin: str = "api"


@dataclass(frozen=True)
class Record:
    """An outbound message and where it is, as the outbox holds it."""

    id: str
    company: str
    seq: int
    to: str
    text: str
    status: Status
    created_at: float
    updated_at: float
    idempotency_key: str | None = None
    reply_to: str | None = None
    media_mimetype: str | None = None
    media_filename: str | None = None
    expires_at: float | None = None
    reason: str | None = None
    whatsapp_id: str | None = None
    origin: str = "api"
    attempts: int = 0

    def public(self) -> dict[str, object]:
        """What the API and the CLI show (never the body or the media bytes)."""
        shown: dict[str, object] = {
            "id": self.id, "company": self.company, "status": self.status.value,
            "to": self.to, "created_at": self.created_at, "updated_at": self.updated_at,
        }  # fmt: skip
        optional = {
            "idempotency_key": self.idempotency_key, "whatsapp_id": self.whatsapp_id,
            "reason": self.reason, "expires_at": self.expires_at, "reply_to": self.reply_to,
        }  # fmt: skip
        shown.update({k: v for k, v in optional.items() if v is not None})
        return shown
