"""wapool's own inbound events, and their JSON (the webhook's body; docs/messaging.md).

Small, frozen and JSON-serialisable: ``to_json`` gives stable field names (they are a public
schema: add fields, never rename them), ``from_json`` reads them back. No neonize type appears
here; ``neonize_translate`` builds these from neonize's protobufs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import Any

#: Version of the JSON schema, sent as ``schema`` with every event.
SCHEMA_VERSION = 1

#: ``InboundMessage.kind`` values (anything else WhatsApp sends is ``other`` with ``raw``).
KINDS = (
    "text", "image", "video", "audio", "document", "sticker", "location", "contacts",
    "reaction", "other",
)  # fmt: skip
MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
#: ``Receipt.status`` values wapool records (others, such as retry receipts, are not events).
RECEIPT_TYPES = ("delivered", "read", "played")


@dataclass(frozen=True)
class Media:
    """What is known of an attachment without downloading it."""

    kind: str
    mimetype: str = ""
    size: int = 0
    #: Hex SHA-256 of the plaintext file (WhatsApp's ``fileSHA256``).
    sha256: str = ""
    file_name: str = ""
    #: Seconds, for audio and video.
    duration: int | None = None


@dataclass(frozen=True)
class Location:
    latitude: float
    longitude: float
    name: str = ""
    address: str = ""


@dataclass(frozen=True)
class Contact:
    display_name: str
    vcard: str = ""


@dataclass(frozen=True)
class Reaction:
    #: The message reacted to.
    message_id: str
    #: The emoji; empty when a reaction is taken back.
    emoji: str


@dataclass(frozen=True)
class InboundMessage:
    """One message as WhatsApp delivered it to a company's session."""

    company: str
    message_id: str
    chat: str
    sender: str
    timestamp: float
    kind: str
    from_me: bool = False
    is_group: bool = False
    #: The sender's other identity (its LID when ``sender`` is a phone JID, or the reverse).
    sender_alt: str = ""
    push_name: str = ""
    #: The text, or a media caption.
    text: str = ""
    quoted_id: str = ""
    reaction: Reaction | None = None
    media: Media | None = None
    location: Location | None = None
    contacts: tuple[Contact, ...] = ()
    #: For ``kind == "other"``: the message protobuf, base64 (standard alphabet).
    raw: str = ""

    @property
    def key(self) -> str:
        return self.message_id


@dataclass(frozen=True)
class Receipt:
    """WhatsApp says messages this company sent were delivered, read or played."""

    company: str
    chat: str
    sender: str
    #: ``delivered``, ``read`` or ``played``.
    status: str
    message_ids: tuple[str, ...]
    timestamp: float
    is_group: bool = False

    @property
    def key(self) -> str:
        return f"{self.status}:{self.chat}:{self.sender}:{','.join(self.message_ids)}"


InboundEvent = InboundMessage | Receipt


@dataclass
class Envelope:
    """An event as the inbox holds it: its local sequence number, when it was written, and its
    JSON text (``to_json``) as written. Consumers that only pass the event on (the webhook, the
    PostgreSQL mirror) use ``body`` and ``data`` and never rebuild the dataclasses."""

    seq: int
    received_at: float
    body: str
    #: ``message`` or ``receipt`` (the inbox's column).
    type: str = ""

    @cached_property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    @cached_property
    def event(self) -> InboundEvent:
        return from_json(self.data)

    @property
    def event_id(self) -> str:
        return str(self.data["id"])

    @property
    def chat(self) -> str:
        return str(self.data["chat"])


def event_type(event: InboundEvent) -> str:
    return "message" if isinstance(event, InboundMessage) else "receipt"


def event_id(event: InboundEvent) -> str:
    """A stable id (the same for every redelivery of the same event): 32 hex characters."""
    text = f"{event.company}\n{event_type(event)}\n{event.key}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def to_json(event: InboundEvent) -> dict[str, Any]:
    """The event's JSON object: ``schema``, ``type``, ``id`` and the event's own fields."""
    # Field by field, not ``asdict`` (which deep-copies every value: ten times slower, and
    # this runs in the client's event handler).
    body: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "type": event_type(event),
        "id": event_id(event),
    }
    for name in _FIELDS[type(event)]:
        value = getattr(event, name)
        if name in ("reaction", "media", "location") and value is not None:
            value = asdict(value)
        elif name == "contacts":
            value = [{"display_name": c.display_name, "vcard": c.vcard} for c in value]
        elif name == "message_ids":
            value = list(value)
        body[name] = value
    return body


#: Fields around the event's own: the webhook adds ``received_at`` (when the inbox got it).
ENVELOPE_FIELDS = frozenset({"schema", "type", "id", "received_at"})


_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (InboundMessage, Receipt)
}


class BadEvent(ValueError):
    """JSON that is not an inbound event of this schema."""


def from_json(data: dict[str, Any]) -> InboundEvent:
    """Read back what ``to_json`` wrote; ``BadEvent`` for anything else."""
    fields = {k: v for k, v in data.items() if k not in ENVELOPE_FIELDS}
    try:
        if data.get("type") == "receipt":
            fields["message_ids"] = tuple(fields.get("message_ids", ()))
            return Receipt(**fields)
        if data.get("type") != "message":
            raise BadEvent(f"unknown event type {data.get('type')!r}")
        for name, cls in (("reaction", Reaction), ("media", Media), ("location", Location)):
            if fields.get(name) is not None:
                fields[name] = cls(**fields[name])
        fields["contacts"] = tuple(Contact(**c) for c in fields.get("contacts", ()))
        return InboundMessage(**fields)
    except TypeError as exc:
        raise BadEvent(f"bad event fields: {exc}") from None
