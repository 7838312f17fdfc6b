"""The webhook's signature: HMAC-SHA256 over ``<timestamp>.<body>`` (docs/messaging.md).

Headers on every delivery:

* ``X-Wapool-Event-Id`` — the event's stable id (the same on every retry: de-duplicate on it);
* ``X-Wapool-Timestamp`` — Unix seconds when this attempt was signed;
* ``X-Wapool-Signature`` — ``sha256=`` and the lowercase hex HMAC-SHA256, keyed with
  ``WAPOOL_WEBHOOK_SECRET`` (its UTF-8 bytes), of the bytes ``<timestamp>`` ``.`` ``<body>``
  (the timestamp header's ASCII digits, a full stop, the raw request body).

A receiver recomputes the HMAC over the raw body it received, compares in constant time, and
refuses timestamps too far from its clock (replays).
"""

from __future__ import annotations

import hashlib
import hmac

EVENT_ID = "X-Wapool-Event-Id"
TIMESTAMP = "X-Wapool-Timestamp"
SIGNATURE = "X-Wapool-Signature"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """Is ``signature`` right for this timestamp header and raw body? (constant time)"""
    if not timestamp.isdigit():
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
