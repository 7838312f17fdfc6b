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
from wapool.observability import alerts
from wapool.observability.redact import describe_error
from wapool.registry.company import Company
from wapool.registry.listener import listen
from wapool.registry.registry import Registry
from wapool.registry.repository import CompanyRepository
from wapool.settings import Settings
from wapool.store.keeper import StoreKeeper
from wapool.store.mirror import Mirror
from wapool.store.snapshot import Snapshot, snapshot_cache
from wapool.store.working_store import store_path
from wapool.supervisor.session import State
from wapool.supervisor.supervisor import OnTransition, Supervisor
from wapool.whatsapp import events as ev

log = logging.getLogger("wapool.daemon")

#: How long a stop may spend pushing the last changes to PostgreSQL (systemd allows 30 s).
SHUTDOWN_DRAIN_SECONDS = 10.0


class StopSignals:
    """Turns SIGTERM/SIGINT into an event; a second SIGINT exits immediately."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.failure: str | None = None
        self._loop = asyncio.get_running_loop()

    def fail(self, reason: str) -> None:
        """Stop because something vital broke; the daemon then exits non-zero."""
        self.failure = reason
        self.stop.set()

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


async def _follow(keeper: StoreKeeper, supervisor: Supervisor, companies: list[Company]) -> None:
    """Stores first (provisioned or restored), then clients for the companies whose store is ready."""
    await keeper.reconcile(c.id for c in companies)
    for company in supervisor.want(keeper.ready):
        await supervisor.stop(company)


async def _reconcile(
    registry: Registry, keeper: StoreKeeper, supervisor: Supervisor,
    snapshots: FallbackCache[str, Snapshot], every: float, stop: asyncio.Event,
    changed: asyncio.Event,
) -> None:  # fmt: skip
    """Every sweep interval, or at once when the registry changes: refresh and follow it."""
    while not stop.is_set():
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())}
        await asyncio.wait(waiters, timeout=every, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if stop.is_set():
            return
        changed.clear()
        registry.cache.sweep()
        snapshots.sweep()
        try:
            companies = await registry.active_companies()
        except DatabaseUnavailable:
            continue  # keep what runs; nothing is stopped because PostgreSQL is down
        await _follow(keeper, supervisor, companies)


def _stop_if_it_dies(task: asyncio.Task[None], signals: StopSignals) -> None:
    """A vital side task that dies takes the daemon down (systemd restarts it), loudly."""

    def done(finished: asyncio.Task[None]) -> None:
        if finished.cancelled() or finished.exception() is None:
            return
        exc = finished.exception()
        error = describe_error(exc) if exc else ""
        log.error("task_failed", extra={"task": finished.get_name(), "error": error}, exc_info=exc)
        signals.fail(f"{finished.get_name()}: {error}")

    task.add_done_callback(done)


def _session_actions(repository: CompanyRepository) -> OnTransition:
    """What the daemon does when a session changes state: registry updates and alerts."""

    async def act(company: str, _state: State, event: ev.WhatsAppEvent) -> None:
        match event:
            case ev.Paired(jid=jid):
                with contextlib.suppress(DatabaseUnavailable):
                    await repository.set_paired_jid(company, jid)
            case ev.LoggedOut(reason=reason):
                alerts.session_logged_out(company, reason)
                with contextlib.suppress(DatabaseUnavailable):
                    await repository.set_paired_jid(company, None)
            case ev.StreamReplaced():
                alerts.session_replaced(company)
            case ev.TemporaryBan(code=code, expires_in=seconds):
                alerts.session_banned(company, code, seconds)
            case ev.ClientOutdated():
                alerts.client_outdated(company)
            case _:
                pass

    return act


def prepare_state_dir(settings: Settings) -> None:
    """The state directory exists and only wapool's user can read it."""
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.state_dir.chmod(0o700)


async def run_daemon(settings: Settings) -> int:
    prepare_state_dir(settings)
    signals = StopSignals()
    signals.install()
    db = Database.from_settings(settings)
    log.info(
        "daemon_starting",
        extra={"database": settings.safe_database_target(), "state_dir": str(settings.state_dir)},
    )
    await db.pool.open(wait=False)
    tasks: list[asyncio.Task[None]] = []
    mirror: Mirror | None = None
    supervisor: Supervisor | None = None
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
        snapshots = snapshot_cache(settings.cache_ttl_seconds, settings.snapshot_cache_mb << 20)
        mirror = Mirror(
            db,
            snapshots=snapshots,
            state_dir=settings.state_dir,
            snapshot_every=settings.cache_sweep_seconds,
        )
        keeper = StoreKeeper(db, settings.state_dir, mirror, snapshots)
        supervisor = Supervisor(
            settings.whatsapp_backend,
            settings.companies_per_worker,
            lambda company: store_path(settings.state_dir, company),
            connect_limit=settings.max_concurrent_connects,
            on_transition=_session_actions(registry.repository),
            heartbeat_timeout=settings.worker_heartbeat_timeout_seconds,
            backend_args=(
                (str(settings.simulated_churn_per_second),)
                if settings.whatsapp_backend == "simulated"
                else ()
            ),
        )
        await _follow(keeper, supervisor, companies)
        changed = asyncio.Event()
        log.info(
            "daemon_ready",
            extra={
                "schema_version": version,
                "companies": len(companies),
                "stores": len(keeper.ready),
            },
        )
        tasks = [
            asyncio.create_task(mirror.run(signals.stop), name="mirror"),
            asyncio.create_task(supervisor.run(signals.stop), name="supervisor"),
            asyncio.create_task(
                _reconcile(
                    registry,
                    keeper,
                    supervisor,
                    snapshots,
                    settings.cache_sweep_seconds,
                    signals.stop,
                    changed,
                ),
                name="reconcile",
            ),
            asyncio.create_task(listen(db, changed, signals.stop), name="registry-listener"),
        ]
        for task in tasks:
            _stop_if_it_dies(task, signals)
        await signals.stop.wait()
        return ExitCode.FAILURE if signals.failure else ExitCode.OK
    finally:
        signals.stop.set()
        for task in tasks:
            # The mirror finishes its tick (its SQLite work runs in a thread that a cancel
            # would not stop); the others are simply cancelled.
            if task.get_name() != "mirror":
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, SHUTDOWN_DRAIN_SECONDS)
        if supervisor is not None:
            await supervisor.close()  # clients stop (bounded) before the last drain
            log.info("clients_stopped")
        if mirror is not None:
            drained = await mirror.drain(timeout=SHUTDOWN_DRAIN_SECONDS)
            log.info("mirror_final_drain", extra={"drained": drained})
            mirror.close()
        await db.close()
        signals.uninstall()
        log.info("daemon_stopped")
