"""What reaches Sentry: tags, release, environment; never key material, passwords or tokens."""

from __future__ import annotations

import logging

import sentry_sdk

from tests.sentry_capture import CapturingTransport, sentry_events  # noqa: F401
from wapool import __version__
from wapool.observability import alerts

DSN_PASSWORD = "pg-Pa55-w0rd"
TOKEN = "123456:AAF-telegram-secret-token"


def test_alerts_carry_tags_release_and_environment(
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    alerts.session_logged_out("962302", "device_removed")
    sentry_sdk.flush()
    (event,) = sentry_events.messages("session_logged_out")
    assert event["level"] == "error"
    assert event["tags"]["company_id"] == "962302"
    assert event["tags"]["component"] == "supervisor"
    assert event["tags"]["operation"] == "session_logged_out"
    assert event["release"] == f"wapool@{__version__}"
    assert event["environment"] == "production"


def test_secrets_and_key_material_are_scrubbed(
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    log = logging.getLogger("wapool.test")
    try:
        raise RuntimeError(
            f"connect to postgresql://wapool:{DSN_PASSWORD}@db/wapool failed; "
            f"password={DSN_PASSWORD}; https://api.telegram.org/bot{TOKEN}/sendMessage"
        )
    except RuntimeError:
        log.exception("boom", extra={"identity_key": b"\x01" * 32, "session": "opaque"})
    with sentry_sdk.new_scope() as scope:
        scope.set_extra("noise_key", "0" * 64)
        scope.set_extra("bot_token", TOKEN)
        scope.set_tag("company_id", "962302")
        sentry_sdk.capture_message(f"token={TOKEN}")
    sentry_sdk.flush()
    text = repr(sentry_events.events)
    assert sentry_events.events, "nothing was captured"
    assert DSN_PASSWORD not in text
    assert TOKEN not in text
    assert "\\x01\\x01" not in text
    assert "0" * 64 not in text
    assert "962302" in text  # tags stay readable
