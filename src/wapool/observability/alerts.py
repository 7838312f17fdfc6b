"""Events operators must hear about, sent to Sentry (and logged) with wapool's tags.

Each function is one kind of event; callers decide *when* (e.g. once per outage), this module
decides *how*. Without a configured Sentry client the events are only logged.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import sentry_sdk
from sentry_sdk.integrations.logging import ignore_logger

log = logging.getLogger("wapool.alerts")
# These lines are logged for the journal; Sentry gets the event itself, once, below.
ignore_logger(log.name)

Level = Literal["info", "warning", "error"]


def _send(message: str, level: Level, company_id: str, component: str, **extra: Any) -> None:
    log.log(
        {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}[level],
        message,
        extra={"company": company_id, "component": component, **extra},
    )
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("company_id", company_id)
        scope.set_tag("component", component)
        scope.set_tag("operation", message)
        for key, value in extra.items():
            scope.set_extra(key, value)
        sentry_sdk.capture_message(message, level=level)


def postgres_outage(company_id: str, error: str, cache_age_seconds: float | None) -> None:
    """Once per outage per company: its changes are piling up locally."""
    _send(
        "postgres_outage_fallback",
        "warning",
        company_id,
        "mirror",
        error=error,
        cache_age_seconds=None if cache_age_seconds is None else round(cache_age_seconds, 1),
    )


def postgres_recovered(company_id: str, outage_seconds: float, rows_replayed: int) -> None:
    _send(
        "postgres_recovered",
        "info",
        company_id,
        "mirror",
        outage_seconds=round(outage_seconds, 1),
        rows_replayed=rows_replayed,
    )


def copy_rejected(company_id: str, reason: str) -> None:
    _send("mirror_rejected", "error", company_id, "mirror", reason=reason)


def restore_failed(company_id: str, reason: str) -> None:
    _send("restore_failed", "error", company_id, "restore", reason=reason)


def store_restored(company_id: str, source: str, reason: str) -> None:
    _send("store_restored", "warning", company_id, "restore", source=source, reason=reason)


def store_unreadable(company_id: str, reason: str) -> None:
    """Once per episode: the store cannot be read or written now (permissions, locks, I/O, a
    full disk); it is retried, never replaced."""
    _send("store_unreadable", "error", company_id, "store", reason=reason)


def store_failed(company_id: str, reason: str) -> None:
    """Once per failure: a running client's store failed; the client waits for it."""
    _send("store_failed", "error", company_id, "store", reason=reason)


def store_salvaged(company_id: str, detail: str) -> None:
    """A broken store's pending changes were all saved to PostgreSQL before it was replaced."""
    _send("store_salvaged", "warning", company_id, "restore", detail=detail)


def changes_lost(company_id: str, detail: str) -> None:
    """A broken store held changes that could not be read: named here, never silently gone."""
    _send("store_changes_unsaved", "error", company_id, "restore", detail=detail)


def disk_low(state_dir: str, free_bytes: int, free_fraction: float) -> None:
    _send(
        "state_dir_low_on_space",
        "warning",
        "-",
        "mirror",
        state_dir=state_dir,
        free_mb=free_bytes // 2**20,
        free_percent=round(free_fraction * 100, 1),
    )


def session_logged_out(company_id: str, reason: str) -> None:
    """The account logged this device out: whatsmeow deletes its keys; pairing is needed."""
    _send("session_logged_out", "error", company_id, "supervisor", reason=reason)


def session_replaced(company_id: str) -> None:
    _send("session_stream_replaced", "error", company_id, "supervisor")


def session_banned(company_id: str, code: str, expires_in: int) -> None:
    _send("session_temporarily_banned", "error", company_id, "supervisor", code=code,
          expires_in_seconds=expires_in)  # fmt: skip


def client_outdated(company_id: str) -> None:
    _send("client_outdated", "error", company_id, "supervisor")


def device_deleted(company_id: str) -> None:
    """The working store lost its device row; the PostgreSQL copy is kept as a tombstone."""
    _send("device_deleted_tombstone_kept", "error", company_id, "mirror")


def offline_start(error: str, registry_age_seconds: float, resumed: int, companies: int) -> None:
    """Once per outage: the daemon started without PostgreSQL and resumed from the state
    directory (the registry as last seen, the leases it held)."""
    _send(
        "started_without_postgres", "warning", "-", "daemon", error=error,
        registry_age_seconds=round(registry_age_seconds, 1), resumed=resumed,
        companies=companies,
    )  # fmt: skip


def offline_recovered(
    degraded_seconds: float, kept: list[str], lost: list[str], pending_rows: int
) -> None:
    """PostgreSQL returned to a daemon started without it (``degraded_seconds`` after its
    start); every lease was re-validated."""
    _send(
        "postgres_recovered_after_offline_start", "warning" if lost else "info", "-", "daemon",
        degraded_seconds=round(degraded_seconds, 1), leases_kept=len(kept),
        leases_lost=", ".join(lost), rows_pending=pending_rows,
    )  # fmt: skip


def store_set_aside(company_id: str, detail: str) -> None:
    """A store whose lease another daemon took over: its unmirrored changes are kept aside,
    never applied over the new holder's copy."""
    _send("store_set_aside", "error", company_id, "leases", detail=detail)


def prekeys_exhausted(company_id: str, wanted: int) -> None:
    """A restore cannot move pre-key numbering past the high-water mark: ids are three bytes."""
    _send("prekey_ids_exhausted", "error", company_id, "restore", wanted=wanted)
