"""What a restored store must never go back on (issue 13), read in whatsmeow's source.

A store restored from a copy that lacks a tail of changes (its host died with unmirrored rows)
must not hand out again what the lost tail may already have given the world:

* **One-time pre-key ids.** whatsmeow numbers new pre-keys ``MAX(key_id) + 1`` over
  ``whatsmeow_pre_keys`` of the device, uploads them (50 at a time, 812 right after pairing) and
  marks them ``uploaded``; it deletes one only once it is consumed (the server handed it out
  and forgot it) and wapool's cleanup never prunes them. The high-water mark is the highest id
  the PostgreSQL copy holds, placeholders of earlier restores included. A restored store gets
  a *placeholder* row at ``mark + WAPOOL_PREKEY_RESTORE_GAP`` (random key, ``uploaded = true``,
  so it is never uploaded, and the server never hands it out, so whatsmeow never consumes it),
  and whatsmeow continues beyond it: a lost host's unmirrored batches (at most the gap) are
  never issued again with other material. Ids travel as three bytes:
  beyond 16,777,215 whatsmeow would wrap, which is alerted instead.
* **Our own group sender keys.** A sender key's chain only moves forward; a stale copy would
  encrypt new group messages with iterations (message keys) already used. Our own sender keys
  are deleted on restore; whatsmeow creates a new one and sends its distribution message with
  the next group message.
* **Signed pre-key** (in ``whatsmeow_device``): whatsmeow never rotates it, so every copy holds
  the current one. **App-state versions**: a stale version makes whatsmeow fetch the patches
  after it again (or a snapshot) and re-apply them; nothing is reused. **Sessions**: a stale
  ratchet fails to decrypt the contact's next message; whatsmeow's retry receipt rebuilds it.
  These need nothing here (docs/auth-store.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from collections.abc import Iterable

from wapool.observability import alerts
from wapool.store.codec import decode_value

log = logging.getLogger(__name__)

PRE_KEYS = "whatsmeow_pre_keys"
#: Pre-key ids are sent as three bytes.
MAX_PREKEY_ID = (1 << 24) - 1


def prekey_id(key: str) -> int | None:
    """The key id in a ``whatsmeow_pre_keys`` change-log key (``["t<jid>", "i<id>"]``)."""
    try:
        value = decode_value(json.loads(key)[1])
    except (ValueError, IndexError, TypeError):
        return None
    return value if isinstance(value, int) else None


def highest_prekey(keys: Iterable[tuple[str, str]]) -> int:
    """The highest pre-key id among (table, key) pairs (0: none)."""
    ids = (prekey_id(k) for t, k in keys if t == PRE_KEYS)
    return max((i for i in ids if i is not None), default=0)


def fence_prekeys(conn: sqlite3.Connection, company_id: str, mark: int, gap: int) -> int | None:
    """Make every device of the store number new pre-keys above ``max(mark, MAX(key_id)) +
    gap``; returns the placeholder id (None: no device, or the id space is exhausted)."""
    placed = None
    for (jid,) in conn.execute("SELECT jid FROM whatsmeow_device").fetchall():
        row = conn.execute(f"SELECT max(key_id) FROM {PRE_KEYS} WHERE jid = ?", (jid,)).fetchone()
        floor = max(mark, int(row[0] or 0)) + gap
        if floor > MAX_PREKEY_ID:
            alerts.prekeys_exhausted(company_id, floor)
            continue
        if gap == 0 or floor <= int(row[0] or 0):
            continue
        conn.execute(
            f"INSERT INTO {PRE_KEYS} (jid, key_id, key, uploaded) VALUES (?, ?, ?, 1)",
            (jid, floor, os.urandom(32)),
        )
        placed = floor
        log.info("prekeys_fenced", extra={"company": company_id, "placeholder": floor,
                                          "mark": mark})  # fmt: skip
    return placed


def drop_own_sender_keys(conn: sqlite3.Connection) -> int:
    """Delete the device's own group sender keys (see the module docstring); returns how many."""
    owners = set()
    for jid, lid in conn.execute("SELECT jid, lid FROM whatsmeow_device").fetchall():
        for address in (jid, lid):
            if address:
                user, _, rest = str(address).partition("@")[0].partition(":")
                owners.add((user.split(".")[0], rest or "0"))
    rows = conn.execute("SELECT our_jid, chat_id, sender_id FROM whatsmeow_sender_keys").fetchall()
    doomed = [row for row in rows if _is_own(str(row[2]), owners)]
    conn.executemany(
        "DELETE FROM whatsmeow_sender_keys WHERE our_jid = ? AND chat_id = ? AND sender_id = ?",
        doomed,
    )
    return len(doomed)


def _is_own(sender: str, owners: set[tuple[str, str]]) -> bool:
    match = re.fullmatch(r"(?P<user>[^:_]+)(?:_\d+)?:(?P<device>\d+)", sender)
    return match is not None and (match["user"], match["device"]) in owners
