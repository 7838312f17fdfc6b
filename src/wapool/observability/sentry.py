"""Sentry set-up: release, environment, logging integration, and scrubbing of secrets.

Everything leaving for Sentry passes ``scrub``: exception messages, breadcrumbs and extras are
run through ``redact`` and any field that looks like key material is dropped.
"""

from __future__ import annotations

from typing import Any

import sentry_sdk
from sentry_sdk.transport import Transport

from wapool import __version__
from wapool.observability.redact import redact
from wapool.settings import Settings

_SENSITIVE = ("key", "secret", "token", "password", "dsn", "session", "identity", "noise", "sig")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return "[bytes]"
    if isinstance(value, dict):
        return {
            k: ("[scrubbed]" if any(s in str(k).lower() for s in _SENSITIVE) else _clean(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def scrub(event: Any, _hint: Any = None) -> Any:
    """``before_send``/``before_breadcrumb``: redact secrets and drop key material."""
    cleaned = _clean(dict(event))
    # Tags, the message and the logger name are wapool's own words; keep them readable.
    for keep in ("tags", "level", "logger", "release", "environment", "timestamp", "event_id"):
        if keep in event:
            cleaned[keep] = event[keep]
    return cleaned


def init_sentry(settings: Settings, transport: Transport | None = None) -> bool:
    """Start Sentry if a DSN is configured (or a transport is given, in tests)."""
    dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None
    if dsn is None and transport is None:
        return False
    sentry_sdk.init(
        dsn=dsn or "https://public@sentry.invalid/1",
        release=f"wapool@{__version__}",
        environment=settings.sentry_environment,
        transport=transport,
        before_send=scrub,
        before_breadcrumb=scrub,
        default_integrations=True,
    )
    return True
