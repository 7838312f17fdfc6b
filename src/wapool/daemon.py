"""``wapool run``: settings -> pool -> schema check -> registry -> serve until told to stop.

The first SIGTERM or SIGINT starts a clean shutdown (exit 0); a second SIGINT forces the
process out at once (exit 130).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from wapool.backoff import Backoff
from wapool.cache import FallbackCache
from wapool.db.migrations import check_schema
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable, ExitCode
from wapool.registry.company import Company
from wapool.registry.registry import Registry
from wapool.registry.repository import CompanyRepository
from wapool.settings import Settings

log = logging.getLogger("wapool.daemon")


class StopSignals:
    """Turns SIGTERM/SIGINT into an event; a second SIGINT exits immediately."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def install(self) -> None:
        self._loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
        self._loop.add_signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)

    def uninstall(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stop.is_set() and sig == signal.SIGINT:
            log.warning("forced_exit", extra={"signal": sig.name})
            logging.shutdown()
            os._exit(ExitCode.INTERRUPTED)
        log.info("stop_requested", extra={"signal": sig.name})
        self.stop.set()


async def _wait_for_schema(db: Database, stop: asyncio.Event) -> int | None:
    """Wait (with backoff) until PostgreSQL answers, then check the schema version."""
    backoff = Backoff(base=0.5, cap=10.0)
    while not stop.is_set():
        try:
            return await db.run(check_schema)
        except DatabaseUnavailable as exc:
            delay = max(0.2, backoff.next_delay())
            log.warning(
                "waiting_for_database", extra={"error": str(exc), "retry_in": round(delay, 2)}
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None


async def _refresh_registry(registry: Registry, every: float, stop: asyncio.Event) -> None:
    """Keep the registry cache warm and sweep expired entries."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        registry.cache.sweep()
        with contextlib.suppress(DatabaseUnavailable):
            await registry.active_companies()


async def run_daemon(settings: Settings) -> int:
    signals = StopSignals()
    signals.install()
    db = Database.from_settings(settings)
    log.info(
        "daemon_starting",
        extra={"database": settings.safe_database_target(), "state_dir": str(settings.state_dir)},
    )
    await db.pool.open(wait=False)
    refresher: asyncio.Task[None] | None = None
    try:
        version = await _wait_for_schema(db, signals.stop)
        if version is None:
            return ExitCode.OK
        registry = Registry(
            CompanyRepository(db),
            FallbackCache[str, list[Company]](
                settings.cache_ttl_seconds, settings.cache_max_entries
            ),
        )
        companies: list[Company] = []
        with contextlib.suppress(DatabaseUnavailable):
            companies = await registry.active_companies()
        log.info("daemon_ready", extra={"schema_version": version, "companies": len(companies)})
        refresher = asyncio.create_task(
            _refresh_registry(registry, settings.cache_sweep_seconds, signals.stop),
            name="registry-refresh",
        )
        await signals.stop.wait()
        return ExitCode.OK
    finally:
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        await db.close()
        signals.uninstall()
        log.info("daemon_stopped")
