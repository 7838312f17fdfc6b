"""The retention policy: which whatsmeow tables lose rows, after how long, and why.

Only tables listed in ``PRUNABLE`` may ever be pruned; everything else (including any table a
future whatsmeow adds) is kept forever. Each entry says why; docs/cleanup.md repeats the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: Tables pruned by default: (reason).
DEFAULT_PRUNED: dict[str, str] = {
    "whatsmeow_message_secrets": (
        "per-message secrets for reactions, poll votes and edits; only needed while someone may "
        "still react to or edit that message, and written once per message, so the table grows "
        "without end"
    ),
    "whatsmeow_sender_keys": (
        "group sender keys; a key not written for the retention period belongs to a group "
        "sender that has gone quiet, and whatsmeow asks for a fresh one (retry receipt) if the "
        "sender speaks again"
    ),
}

#: Tables that may be pruned only when asked for explicitly (WAPOOL_CLEANUP_TABLE_DAYS).
OPT_IN: dict[str, str] = {
    "whatsmeow_sessions": (
        "Signal sessions are the largest table (12 GB reports), but deleting one forces a new "
        "session handshake with that contact: the first message either way after the cut may "
        "fail to decrypt until the retry receipt rebuilds it. Opt in only with a long period"
    ),
}

#: Never pruned, whatever the settings say: (reason).
PROTECTED: dict[str, str] = {
    "whatsmeow_device": "the device credentials: losing them means pairing again",
    "whatsmeow_identity_keys": "contacts' identity keys: trust-on-first-use state",
    "whatsmeow_pre_keys": "uploaded pre-keys: the server hands them out to new senders",
    "whatsmeow_app_state_sync_keys": "app-state keys: needed to decrypt app-state patches",
    "whatsmeow_app_state_version": "app-state versions: losing them forces a full resync",
    "whatsmeow_app_state_mutation_macs": "mutation MACs: needed to verify app-state patches",
    "whatsmeow_version": "the schema version of the store",
}

PRUNABLE = {**DEFAULT_PRUNED, **OPT_IN}


@dataclass(frozen=True)
class RetentionPolicy:
    """How many days each prunable table keeps rows after their last write."""

    days: dict[str, int] = field(default_factory=dict)
    #: Removed companies and logout tombstones are deleted after this many days.
    removed_days: int = 30

    @classmethod
    def build(cls, retention_days: int, overrides: str = "") -> RetentionPolicy:
        days = dict.fromkeys(DEFAULT_PRUNED, retention_days)
        days.update(parse_overrides(overrides))
        return cls({t: d for t, d in days.items() if d > 0}, retention_days)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(sorted(self.days))

    def cutoff(self, table: str, now: datetime) -> datetime:
        return now - timedelta(days=self.days[table])

    def removed_cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.removed_days)


def parse_overrides(text: str) -> dict[str, int]:
    """``table=days,table=days`` (``0`` = never); raises ValueError naming what is wrong."""
    result: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        table = name.strip()
        if not table.startswith("whatsmeow_"):
            table = "whatsmeow_" + table
        if not sep or not value.strip().isdigit():
            raise ValueError(f"expected TABLE=DAYS items separated by commas, got {item!r}")
        if table not in PRUNABLE:
            allowed = ", ".join(sorted(PRUNABLE))
            raise ValueError(f"{table} may never be pruned; prunable tables: {allowed}")
        result[table] = int(value)
    return result
