"""A company and the rules for its id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from wapool.errors import InvalidCompanyId, InvalidDisplayName
from wapool.terminal import unsafe_characters

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_DISPLAY_NAME = 200


def validate_company_id(value: str) -> str:
    """Return the id if it is well formed, else raise ``InvalidCompanyId``.

    Ids are used as directory names and log fields, so they are kept to 1-63 lower-case
    letters, digits, ``-`` and ``_``, starting with a letter or digit (``962302``, ``acme-bakery``).
    """
    if not _ID.match(value):
        shown = value if len(value) <= 70 and value.isprintable() else repr(value[:70])
        raise InvalidCompanyId(
            f"invalid company id {shown!r}: use 1-63 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. 962302 or acme-bakery)"
        )
    return value


def validate_display_name(value: str) -> str:
    """Return the name if it is fit to print, else raise ``InvalidDisplayName``.

    ``company list`` prints names on operators' terminals: no control characters (escape
    sequences, newlines), line separators or bidirectional overrides (see ``terminal``)."""
    if len(value) > MAX_DISPLAY_NAME:
        raise InvalidDisplayName(f"display name is longer than {MAX_DISPLAY_NAME} characters")
    if bad := unsafe_characters(value):
        raise InvalidDisplayName(
            f"display name holds control characters ({', '.join(bad)}): they would rewrite "
            "the terminal of whoever lists companies; use plain text"
        )
    return value


@dataclass(frozen=True)
class Company:
    id: str
    display_name: str
    enabled: bool
    paired_jid: str | None
    created_at: datetime
    updated_at: datetime
    removed_at: datetime | None = None

    @property
    def active(self) -> bool:
        """Should a client run for it: enabled and not removed."""
        return self.enabled and self.removed_at is None
