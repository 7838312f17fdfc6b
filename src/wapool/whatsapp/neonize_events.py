"""neonize's message and receipt protobufs -> wapool's own events (``messaging.model``).

Pure attribute access on the protobuf objects neonize hands its handlers (``MessageEv`` is
``Neonize_pb2.Message``, ``ReceiptEv`` is ``Neonize_pb2.Receipt``), so this module needs no
neonize import and the tests build real events offline from neonize's own classes.

whatsmeow has already unwrapped the message (ephemeral, view-once, document-with-caption) before
neonize encodes it; the wrappers are unwrapped here too in case an event arrives wrapped.
"""

from __future__ import annotations

import base64
from typing import Any

from wapool.messaging.model import Contact, InboundMessage, Location, Media, Reaction, Receipt

#: neonize's ``Receipt.Type`` enum names -> wapool's receipt types (others are not recorded).
RECEIPT_TYPES = {"DELIVERED": "delivered", "READ": "read", "PLAYED": "played"}
#: Message fields that wrap another ``Message`` in their ``message`` field.
_WRAPPERS = (
    "ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension",
    "documentWithCaptionMessage", "editedMessage",
)  # fmt: skip
#: Message field -> media kind.
_MEDIA = {
    "imageMessage": "image", "videoMessage": "video", "ptvMessage": "video",
    "audioMessage": "audio", "documentMessage": "document", "stickerMessage": "sticker",
}  # fmt: skip


def jid(value: Any) -> str:
    """A neonize ``JID`` protobuf as WhatsApp writes it (``user[:device]@server``)."""
    user, server = str(getattr(value, "User", "")), str(getattr(value, "Server", ""))
    if not server:
        return ""
    device = int(getattr(value, "Device", 0) or 0)
    return f"{user}:{device}@{server}" if device else f"{user}@{server}"


def _has(msg: Any, name: str) -> bool:
    try:
        return bool(msg.HasField(name))
    except ValueError:
        return False


def _unwrap(msg: Any) -> Any:
    for _ in range(4):  # wrappers nest (an ephemeral view-once message)
        wrapper = next((w for w in _WRAPPERS if _has(msg, w)), None)
        if wrapper is None or not _has(getattr(msg, wrapper), "message"):
            return msg
        msg = getattr(msg, wrapper).message
    return msg


def translate_message(company: str, event: Any) -> InboundMessage:
    """A ``MessageEv`` as an ``InboundMessage``."""
    info, source = event.Info, event.Info.MessageSource
    base: dict[str, Any] = {
        "company": company, "message_id": str(info.ID), "chat": jid(source.Chat),
        "sender": jid(source.Sender), "sender_alt": jid(source.SenderAlt),
        "timestamp": int(info.Timestamp) / 1000.0, "from_me": bool(source.IsFromMe),
        "is_group": bool(source.IsGroup), "push_name": str(info.Pushname),
    }  # fmt: skip
    return InboundMessage(**base, **_content(_unwrap(event.Message)))


def _content(msg: Any) -> dict[str, Any]:
    if msg.conversation:
        return {"kind": "text", "text": str(msg.conversation)}
    if _has(msg, "extendedTextMessage"):
        ext = msg.extendedTextMessage
        return {"kind": "text", "text": str(ext.text), "quoted_id": _quoted(ext)}
    for name, kind in _MEDIA.items():
        if _has(msg, name):
            return _media(getattr(msg, name), kind)
    if _has(msg, "reactionMessage"):
        reaction = msg.reactionMessage
        return {"kind": "reaction", "reaction": Reaction(str(reaction.key.ID), str(reaction.text))}
    if _has(msg, "locationMessage") or _has(msg, "liveLocationMessage"):
        loc = msg.locationMessage if _has(msg, "locationMessage") else msg.liveLocationMessage
        location = Location(
            float(loc.degreesLatitude), float(loc.degreesLongitude),
            str(getattr(loc, "name", "")), str(getattr(loc, "address", "")),
        )  # fmt: skip
        return {"kind": "location", "location": location, "quoted_id": _quoted(loc)}
    if _has(msg, "contactMessage"):
        contact = msg.contactMessage
        return {"kind": "contacts", "contacts": (_contact(contact),), "quoted_id": _quoted(contact)}
    if _has(msg, "contactsArrayMessage"):
        array = msg.contactsArrayMessage
        contacts = tuple(_contact(c) for c in array.contacts)
        return {"kind": "contacts", "contacts": contacts, "quoted_id": _quoted(array)}
    return {"kind": "other", "raw": base64.b64encode(msg.SerializeToString()).decode()}


def _media(part: Any, kind: str) -> dict[str, Any]:
    duration = int(part.seconds) if hasattr(part, "seconds") and _has(part, "seconds") else None
    media = Media(
        kind=kind, mimetype=str(part.mimetype), size=int(part.fileLength),
        sha256=bytes(part.fileSHA256).hex(), file_name=str(getattr(part, "fileName", "")),
        duration=duration,
    )  # fmt: skip
    caption = str(getattr(part, "caption", ""))
    return {"kind": kind, "media": media, "text": caption, "quoted_id": _quoted(part)}


def _contact(contact: Any) -> Contact:
    return Contact(str(contact.displayName), str(contact.vcard))


def _quoted(part: Any) -> str:
    if _has(part, "contextInfo") and part.contextInfo.stanzaID:
        return str(part.contextInfo.stanzaID)
    return ""


def translate_receipt(company: str, event: Any) -> Receipt | None:
    """A ``ReceiptEv`` as a ``Receipt``; None for receipt types wapool does not record (our own
    devices' reads, retries, server errors)."""
    values = event.DESCRIPTOR.fields_by_name["Type"].enum_type.values_by_number
    value = values.get(int(event.Type))
    kind = RECEIPT_TYPES.get(value.name) if value is not None else None
    if kind is None:
        return None
    source = event.MessageSource
    return Receipt(
        company=company, chat=jid(source.Chat), sender=jid(source.Sender), status=kind,
        message_ids=tuple(str(i) for i in event.MessageIDs), timestamp=float(event.Timestamp),
        is_group=bool(source.IsGroup),
    )  # fmt: skip
