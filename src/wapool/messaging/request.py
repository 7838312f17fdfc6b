"""The API's send request, checked field by field: every problem names its field.

{"to": "+49 170 1234567" | "491701234567@s.whatsapp.net",
 "text": "Hello",                        (or a media message's caption)
 "reply_to": "3EB0...",                  (optional: the WhatsApp id of the message answered)
 "media": {"data": "<base64>", "mimetype": "image/jpeg", "filename": "a.jpg",
           "caption": "..."},            (optional; bytes only, nothing is fetched)
 "idempotency_key": "order-42",          (optional, up to 200 characters)
 "expires_at": "2026-12-01T10:00:00Z"}   (optional; or Unix seconds)
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

from wapool.messaging.outbound import Media, Outbound, recipient_jid

MAX_TEXT = 65_536
MAX_KEY = 200
_KNOWN = {"to", "text", "reply_to", "media", "idempotency_key", "expires_at"}
_MEDIA_KNOWN = {"data", "mimetype", "filename", "caption"}
_MIMETYPE = re.compile(r"^[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*$", re.IGNORECASE)


class FieldError(ValueError):
    """One bad field: ``field`` names it (dotted for nested ones)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_send(company: str, data: Any, now: float) -> Outbound:
    if not isinstance(data, dict):
        raise FieldError("body", "must be a JSON object")
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise FieldError(unknown[0], "unknown field")
    to = _string(data, "to", required=True)
    try:
        jid = recipient_jid(to or "")
    except ValueError as exc:
        raise FieldError("to", str(exc)) from None
    text = _string(data, "text") or ""
    media = _media(data.get("media"))
    if media is not None:
        if text:
            raise FieldError("text", "a media message takes its text as media.caption")
        text = _string(data["media"], "caption", prefix="media.") or ""
    elif not text:
        raise FieldError("text", "required (or media)")
    if len(text) > MAX_TEXT:
        raise FieldError("text" if media is None else "media.caption",
                         f"longer than {MAX_TEXT} characters")  # fmt: skip
    key = _string(data, "idempotency_key")
    if key is not None and not 1 <= len(key) <= MAX_KEY:
        raise FieldError("idempotency_key", f"must be 1 to {MAX_KEY} characters")
    reply_to = _string(data, "reply_to")
    if reply_to is not None and not re.fullmatch(r"[0-9A-Za-z._:-]{1,128}", reply_to):
        raise FieldError("reply_to", "must be a WhatsApp message id")
    expires = _expires(data.get("expires_at"), now)
    return Outbound(company, jid, text, reply_to, media, key, expires)


def parse_read(data: Any) -> tuple[str, str, list[str]]:
    """``{"chat": JID, "sender": JID (default: the chat), "message_ids": [...]}``."""
    if not isinstance(data, dict):
        raise FieldError("body", "must be a JSON object")
    unknown = sorted(set(data) - {"chat", "sender", "message_ids"})
    if unknown:
        raise FieldError(unknown[0], "unknown field")
    jids: list[str] = []
    for name in ("chat", "sender"):
        value = _string(data, name, required=name == "chat")
        try:
            jids.append(recipient_jid(value) if value is not None else jids[0])
        except ValueError as exc:
            raise FieldError(name, str(exc)) from None
    ids = data.get("message_ids")
    if (not isinstance(ids, list) or not 1 <= len(ids) <= 100
            or not all(isinstance(i, str) and re.fullmatch(r"[0-9A-Za-z._:-]{1,128}", i)
                       for i in ids)):  # fmt: skip
        raise FieldError("message_ids", "must be a list of 1 to 100 WhatsApp message ids")
    return jids[0], jids[1], ids


def _string(data: dict[str, Any], name: str, *, required: bool = False,
            prefix: str = "") -> str | None:  # fmt: skip
    value = data.get(name)
    if value is None:
        if required:
            raise FieldError(prefix + name, "required")
        return None
    if not isinstance(value, str):
        raise FieldError(prefix + name, "must be a string")
    return value


def _media(value: Any) -> Media | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError("media", "must be an object with data (base64) and mimetype")
    unknown = sorted(set(value) - _MEDIA_KNOWN)
    if unknown:
        raise FieldError(f"media.{unknown[0]}", "unknown field")
    encoded = _string(value, "data", required=True, prefix="media.") or ""
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError("media.data", "must be base64 (standard alphabet)") from None
    if not data:
        raise FieldError("media.data", "is empty")
    mimetype = _string(value, "mimetype", required=True, prefix="media.") or ""
    if not _MIMETYPE.match(mimetype):
        raise FieldError("media.mimetype", "must be a MIME type like image/jpeg")
    filename = _string(value, "filename", prefix="media.")
    if filename is not None and (not 1 <= len(filename) <= 255 or "/" in filename):
        raise FieldError("media.filename", "must be a file name (1 to 255 characters, no /)")
    return Media(data, mimetype.lower(), filename)


def _expires(value: Any, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FieldError("expires_at", "must be an ISO 8601 time with a zone, or Unix seconds")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise FieldError("expires_at", "must be an ISO 8601 time with a zone") from None
        if moment.tzinfo is None:
            raise FieldError("expires_at", "must name its time zone (e.g. Z)")
        seconds = moment.timestamp()
    else:
        seconds = float(value)
    if seconds <= now:
        raise FieldError("expires_at", "is in the past")
    return seconds
