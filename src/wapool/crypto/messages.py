"""Message bodies sealed with the company's data key: what ``inbound_messages`` and
``outbound_messages`` keep in their ``sealed`` column (bytea).

A sealed value is ``b"e1:<data key id>:" + nonce + ciphertext + tag`` (AES-256-GCM, the same
data keys as the store rows, ``crypto.envelope``). The associated data binds the company, the
table and the message's key (inbound: WhatsApp's message id; outbound: the row's id) and the
data key id, so a value copied to another message, table or company does not open. Message
rows are written once and their content never changes afterwards (statuses live in other
columns), so no sequence is needed to tell an old version from the current one: the sequence
in the associated data is 0.

* inbound: the whole event, the webhook's JSON text (``event`` is then NULL and ``body`` empty);
* outbound: text (or caption), media bytes and file name, framed as one JSON line (text, file
  name, whether there is media) followed by the media bytes (``text`` is then empty, ``media``
  and ``media_filename`` NULL; ``media_mimetype`` stays, it is the message's kind).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from wapool.crypto.envelope import NONCE_BYTES, PREFIX, DataKey, RowUnreadable, associated_data

INBOUND = "inbound_messages"
OUTBOUND = "outbound_messages"
_PREFIX = PREFIX.encode()


@dataclass(frozen=True)
class Content:
    """What an outbound message says: its text (or caption), media bytes and file name."""

    text: str
    media: bytes | None = None
    filename: str | None = None


def prefix(dk: DataKey) -> bytes:
    """How every value sealed with ``dk`` starts (to find values sealed with another key)."""
    return _PREFIX + dk.key_id.encode() + b":"


def seal(dk: DataKey, company_id: str, table: str, key: str, data: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    sealed = dk.aead.encrypt(nonce, data, associated_data(company_id, table, key, 0, dk.key_id))
    return prefix(dk) + nonce + sealed


def open_sealed(
    keys: dict[str, DataKey], company_id: str, table: str, key: str, sealed: bytes
) -> bytes:
    """The plaintext; ValueError saying why (never with secrets) when it does not open."""
    if not sealed.startswith(_PREFIX):
        raise ValueError("is not a sealed value")
    key_id, sep, raw = sealed[len(_PREFIX) :].partition(b":")
    dk = keys.get(key_id.decode(errors="replace"))
    if not sep or dk is None:
        raise ValueError(f"sealed with data key {key_id.decode(errors='replace')!r}, which "
                         "this company does not have")  # fmt: skip
    try:
        return dk.aead.decrypt(
            raw[:NONCE_BYTES],
            raw[NONCE_BYTES:],
            associated_data(company_id, table, key, 0, dk.key_id),
        )
    except (InvalidTag, ValueError):
        raise ValueError("does not decrypt for this company, table and message") from None


def seal_event(dk: DataKey, company_id: str, message_id: str, event_json: str) -> bytes:
    return seal(dk, company_id, INBOUND, message_id, event_json.encode())


def open_event(keys: dict[str, DataKey], company_id: str, message_id: str, sealed: bytes) -> str:
    return open_sealed(keys, company_id, INBOUND, message_id, sealed).decode()


def seal_content(dk: DataKey, company_id: str, message_id: str, content: Content) -> bytes:
    head = json.dumps(
        {"text": content.text, "filename": content.filename, "media": content.media is not None}
    )  # JSON never holds a raw newline: the first one ends the head
    data = head.encode() + b"\n" + (content.media or b"")
    return seal(dk, company_id, OUTBOUND, message_id, data)


def open_content(
    keys: dict[str, DataKey], company_id: str, message_id: str, sealed: bytes
) -> Content:
    data = open_sealed(keys, company_id, OUTBOUND, message_id, sealed)
    head, _, media = data.partition(b"\n")
    fields = json.loads(head)
    return Content(fields["text"], media if fields["media"] else None, fields["filename"])


def unreadable(company_id: str, table: str, message_id: str, why: str) -> RowUnreadable:
    return RowUnreadable(f"company {company_id!r}: {table} message {message_id} {why}")
