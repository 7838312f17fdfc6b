"""The message protocol between the main process and worker processes.

One JSON object per line, each with the protocol version ``v`` and a ``type``. Anything else —
not JSON, not an object, another version, an unknown type, a missing or mistyped field — is a
``ProtocolError``: the receiver logs it and carries on; it never crashes.

main -> worker:  start {company, store} | stop {company} | logout {company}
                 | pair_phone {company, phone} | shutdown {}
                 | drill_crash {company}   (crash the worker for real, for drills and tests)
                 | send {company, id, to, text, [reply_to, media (base64), mimetype, filename]}
                 | mark_read {company, chat, sender, ids}   (read receipts for inbound messages)
worker -> main:  hello {pid} | heartbeat {fds} | event {company, event, fields}
                 | stopped {company, clean} | error {company, message}
                 | send_result {company, id, outcome, [whatsapp_id, reason]}
                   (``outcome``: sent, not_sent, failed, uncertain; see ``whatsapp.sending``)
                 | inbox {company, seq, messages}   (the company's inbox holds events up to
                   ``seq``; ``messages`` of them new messages since the last notice: the main
                   process wakes its readers instead of polling)

Only ``send`` may be longer than ``MAX_LINE`` (media): a worker reads commands up to
``MAX_COMMAND_LINE``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any

from wapool.whatsapp import events as ev
from wapool.whatsapp.sending import Outcome, SendCommand, SendResult

VERSION = 1
MAX_LINE = 64 * 1024
#: A ``send`` with media (the API's body limit is at most 64 MB, base64 included).
MAX_COMMAND_LINE = 96 * 1024 * 1024
#: Environment variable through which the main process gives a worker its pid: the worker
#: then dies with it.
PARENT_ENV = "WAPOOL_WORKER_PARENT"

#: Message type -> required fields and their types.
SCHEMA: dict[str, dict[str, type]] = {
    "start": {"company": str, "store": str},
    "stop": {"company": str},
    "logout": {"company": str},
    "pair_phone": {"company": str, "phone": str},
    "shutdown": {},
    "drill_crash": {"company": str, "store": str},
    "hello": {"pid": int},
    "heartbeat": {"fds": int},
    "event": {"company": str, "event": str, "fields": dict},
    "stopped": {"company": str, "clean": bool},
    "error": {"company": str, "message": str},
    "send": {"company": str, "id": str, "to": str, "text": str},
    "mark_read": {"company": str, "chat": str, "sender": str, "ids": list},
    "send_result": {"company": str, "id": str, "outcome": str},
    "inbox": {"company": str, "seq": int, "messages": int},
}

#: Message type -> fields that may be absent (or null), and their types when present.
OPTIONAL: dict[str, dict[str, type]] = {
    "send": {"reply_to": str, "media": str, "mimetype": str, "filename": str},
    "send_result": {"whatsapp_id": str, "reason": str},
}
#: Fields whose value must be one of a set.
CHOICES: dict[str, dict[str, frozenset[str]]] = {
    "send_result": {"outcome": frozenset(o.value for o in Outcome)},
}

#: Integer fields that must not be negative.
NON_NEGATIVE: dict[str, tuple[str, ...]] = {"inbox": ("seq", "messages")}

EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        ev.QrCode, ev.PairCode, ev.Paired, ev.Connected, ev.Disconnected, ev.ConnectFailed,
        ev.LoggedOut, ev.StreamReplaced, ev.TemporaryBan, ev.ClientOutdated,
        ev.KeepAliveTimeout, ev.KeepAliveRestored, ev.MessageReceived, ev.StoreFailed,
    )
}  # fmt: skip


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


def encode(kind: str, **fields: Any) -> bytes:
    if kind not in SCHEMA:
        raise ProtocolError(f"unknown message type {kind!r}")
    return (
        json.dumps({"v": VERSION, "type": kind, **fields}, separators=(",", ":")).encode() + b"\n"
    )


def decode(line: bytes, limit: int = MAX_LINE) -> tuple[str, dict[str, Any]]:
    """Parse and validate one line; return (type, fields)."""
    if len(line) > limit:
        raise ProtocolError(f"message longer than {limit} bytes")
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError("not JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r}")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in SCHEMA:
        raise ProtocolError(f"unknown message type {kind!r}")
    for name, expected in SCHEMA[kind].items():
        value = message.get(name)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ProtocolError(f"{kind}: field {name!r} missing or not {expected.__name__}")
    for name, expected in OPTIONAL.get(kind, {}).items():
        value = message.get(name)
        if value is not None and not isinstance(value, expected):
            raise ProtocolError(f"{kind}: field {name!r} not {expected.__name__}")
    for name, allowed in CHOICES.get(kind, {}).items():
        if message[name] not in allowed:
            raise ProtocolError(f"{kind}: field {name!r} is not one of {sorted(allowed)}")
    for name in NON_NEGATIVE.get(kind, ()):
        if message[name] < 0:
            raise ProtocolError(f"{kind}: field {name!r} is negative")
    return kind, {k: v for k, v in message.items() if k not in ("v", "type")}


def encode_event(company: str, event: ev.WhatsAppEvent) -> bytes:
    return encode(
        "event", company=company, event=type(event).__name__, fields=dataclasses.asdict(event)
    )


def decode_event(fields: dict[str, Any]) -> ev.WhatsAppEvent:
    cls = EVENT_TYPES.get(fields["event"])
    if cls is None:
        raise ProtocolError(f"unknown event {fields['event']!r}")
    try:
        event: ev.WhatsAppEvent = cls(**fields["fields"])
    except TypeError:
        raise ProtocolError(f"bad fields for event {fields['event']!r}") from None
    return event


def encode_send(company: str, command: SendCommand) -> bytes:
    media = base64.b64encode(command.media).decode() if command.media is not None else None
    return encode(
        "send", company=company, id=command.id, to=command.to, text=command.text,
        reply_to=command.reply_to, media=media, mimetype=command.mimetype,
        filename=command.filename,
    )  # fmt: skip


def decode_send(fields: dict[str, Any]) -> SendCommand:
    media = fields.get("media")
    try:
        data = base64.b64decode(media, validate=True) if media is not None else None
    except (binascii.Error, ValueError):
        raise ProtocolError("send: field 'media' is not base64") from None
    return SendCommand(
        fields["id"], fields["to"], fields["text"], fields.get("reply_to"), data,
        fields.get("mimetype"), fields.get("filename"),
    )  # fmt: skip


def encode_send_result(company: str, result: SendResult) -> bytes:
    return encode(
        "send_result", company=company, id=result.id, outcome=result.outcome.value,
        whatsapp_id=result.whatsapp_id, reason=result.reason,
    )  # fmt: skip


def decode_send_result(fields: dict[str, Any]) -> SendResult:
    return SendResult(
        fields["id"], Outcome(fields["outcome"]), fields.get("whatsapp_id"), fields.get("reason")
    )
