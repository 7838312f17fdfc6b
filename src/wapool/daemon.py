"""``wapool run``: settings -> pool -> schema check -> registry -> serve until told to stop.

The first SIGTERM or SIGINT starts a clean shutdown (exit 0); a second SIGINT forces the
process out at once (exit 130). Without PostgreSQL at start, the companies held before may be
resumed from the state directory (``outage``).

It is one module because it is the process's life in order — startup, the tasks, their
teardown — which reads best top to bottom in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal

from wapool.backoff import Backoff
from wapool.crypto.key_watch import KeyWatch
from wapool.crypto.usage import check_startup
from wapool.db.migrations import check_schema
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable, ExitCode, WapoolError
from wapool.keepalive import heartbeat_loop, renew_loop
from wapool.messaging.api import Api
from wapool.observability.http import HttpServer, is_loopback
from wapool.observability.redact import describe_error
from wapool.observability.sdnotify import Notifier
from wapool.outage.resume import offline_plan, recover, start_offline
from wapool.registry.company import Company
from wapool.registry.listener import listen
from wapool.runtime import Runtime
from wapool.settings import Settings, split_host_port
from wapool.shutdown import shut_down
from wapool.views import Views
from wapool.whatsapp import media_tools
from wapool.wiring import build_runtime

log = logging.getLogger("wapool.daemon")

#: How long a stop may spend pushing the last changes to PostgreSQL. The unit's TimeoutStopSec=45
#: covers the clients' stop (up to 15 s) plus this drain; the other waits bounded by it (the
#: mirror's last tick, a running cleanup's batch) normally take milliseconds.
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


async def _wait_for_schema(
    db: Database, stop: asyncio.Event, notify: Notifier, settings: Settings
) -> int | None:
    """Wait (with backoff) until PostgreSQL answers, then check the schema version.

    The pool only ever says "timed out"; a direct connection attempt tells why. A refused
    role or an impossible connection string ends the wait (exit 77 or 78): waiting cannot
    fix them, and systemd must not restart the daemon in a loop."""
    backoff = Backoff(base=0.5, cap=10.0)
    while not stop.is_set():
        try:
            return await db.run(check_schema)
        except DatabaseUnavailable as exc:
            reason = await _why_unavailable(db, settings) or str(exc)
            delay = max(0.2, backoff.next_delay())
            notify.status("waiting for PostgreSQL")
            notify.extend_timeout(delay + 30)  # systemd keeps waiting while we do
            log.warning(
                "waiting_for_database", extra={"error": reason, "retry_in": round(delay, 2)}
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None


async def _why_unavailable(db: Database, settings: Settings) -> str | None:
    """The real reason PostgreSQL cannot be used; raises when waiting cannot help."""
    try:
        await db.probe(timeout=settings.db_connect_timeout_seconds + 1.0)
    except DatabaseUnavailable as exc:
        return str(exc)
    return None


async def _first_contact(db: Database, settings: Settings) -> int | str:
    """The schema version, or why PostgreSQL cannot be reached (raises when waiting cannot
    help, as ``_wait_for_schema`` does)."""
    try:
        return await db.run(check_schema)
    except DatabaseUnavailable as exc:
        return await _why_unavailable(db, settings) or str(exc)


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


async def _start_http(settings: Settings, runtime: Runtime) -> HttpServer | None:
    """Serve /healthz /readyz /metrics /status; a busy port is reported, never fatal."""
    host, port = split_host_port(settings.http_addr)
    max_body = int(settings.api_max_body_mb * (1 << 20))
    if not is_loopback(host):
        log.warning(
            "http_not_loopback",
            extra={
                "address": settings.http_addr,
                "risk": "/status shows phone numbers and state paths, without authentication, "
                "to anyone who can reach this address",
            },
        )
    api = None
    if runtime.outbound is not None:
        api = Api(runtime.outbound, settings.api_token_list(), max_body)
        if not settings.api_tokens:
            log.info("api_off", extra={"reason": "WAPOOL_API_TOKENS is not set"})
    server = HttpServer(host, port, Views(runtime).endpoints(), api, max_body)
    try:
        await server.start()
    except OSError as exc:
        log.error("http_unavailable", extra={"address": settings.http_addr, "error": str(exc)})
        return None
    return server


def prepare_state_dir(settings: Settings) -> int:
    """The state directory exists, only wapool's user can read it, and no other daemon uses it.

    Returns the descriptor holding the lock (kept open for the daemon's life).
    """
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.state_dir.chmod(0o700)
    fd = os.open(settings.state_dir / "daemon.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WapoolError(
            f"another wapool daemon is running on {settings.state_dir}; "
            "each daemon needs its own state directory"
        ) from None
    return fd


async def run_daemon(settings: Settings) -> int:
    lock = prepare_state_dir(settings)
    signals = StopSignals()
    signals.install()
    notify = Notifier()
    db = Database.from_settings(settings)
    log.info(
        "daemon_starting",
        extra={"database": settings.safe_database_target(), "state_dir": str(settings.state_dir)},
    )
    if settings.whatsapp_backend == "neonize":
        media_tools.report_once()  # workers keep quiet about it
    await db.pool.open(wait=False)
    tasks: list[asyncio.Task[None]] = []
    renewal: asyncio.Task[None] | None = None
    keep_leases = asyncio.Event()  # set once the clients are stopped and the leases given back
    runtime: Runtime | None = None
    http: HttpServer | None = None
    try:
        first = await _first_contact(db, settings)
        plan = offline_plan(settings) if isinstance(first, str) else None
        version = first if isinstance(first, int) else None
        if plan is None and version is None:
            version = await _wait_for_schema(db, signals.stop, notify, settings)
            if version is None:
                return ExitCode.OK
        await check_startup(db, settings)  # a missing or wrong master key: exit 78
        runtime = build_runtime(settings, db)
        runtime.messaging.serve_found()  # a backlog left by the last run drains at once
        if plan is not None:
            start_offline(runtime, plan, str(first))
        # Leases are renewed from the moment the first one is taken, whatever follow() does,
        # until the last client has stopped.
        renewal = asyncio.create_task(renew_loop(runtime, keep_leases), name="leases")
        _stop_if_it_dies(renewal, signals)
        changed = asyncio.Event()
        if plan is None:  # (without PostgreSQL, the first heartbeat that reaches it registers)
            runtime.unclaimed = set(runtime.last_seen.held_before())
            with contextlib.suppress(DatabaseUnavailable):
                await runtime.nodes.register()  # the others count this node before it takes a lease
                await runtime.leave_behind()  # a killed run's stores of companies taken since
        heartbeat = asyncio.create_task(
            heartbeat_loop(runtime, signals.stop, changed), name="heartbeat"
        )
        _stop_if_it_dies(heartbeat, signals)
        tasks = [heartbeat]
        companies: list[Company] = plan.companies if plan else []
        if plan is None:
            with contextlib.suppress(DatabaseUnavailable):
                companies = await runtime.active_companies()
        await runtime.follow(companies)
        log.info(
            "daemon_ready",
            extra={
                "schema_version": version,
                "companies": len(companies),
                "stores": len(runtime.keeper.ready),
                "node": runtime.leases.holder,
                "mode": "degraded" if plan else "normal",
            },
        )
        await runtime.scheduler.start()
        await runtime.sizes.load()
        http = await _start_http(settings, runtime)
        notify.ready(
            f"running {len(runtime.keeper.ready)} of {len(companies)} companies"
        )  # migrations checked, registry loaded, first reconcile done
        # What start-up built (modules, settings, pools, stores) lives as long as the process:
        # out of the collector's sight, a full collection scans only what came after. Measured
        # at 1,000 inbound messages a second: full collections held the event loop up to 90 ms
        # each (docs/messaging.md, figures).
        gc.freeze()
        tasks += [
            asyncio.create_task(runtime.mirror.run(signals.stop), name="mirror"),
            asyncio.create_task(runtime.supervisor.run(signals.stop), name="supervisor"),
            asyncio.create_task(runtime.reconcile_loop(signals.stop, changed), name="reconcile"),
            asyncio.create_task(listen(db, changed, signals.stop), name="registry-listener"),
            asyncio.create_task(notify.watchdog(signals.stop), name="watchdog"),
            asyncio.create_task(runtime.messaging.run(signals.stop), name="messaging"),
            asyncio.create_task(
                KeyWatch(db, settings.master_key_file).run(
                    signals.stop, settings.master_key_check_seconds
                ),
                name="key-watch",
            ),
        ]
        if runtime.outbound is not None:
            outbound = runtime.outbound
            tasks += [
                asyncio.create_task(outbound.run(signals.stop), name="outbound"),
                asyncio.create_task(outbound.sync.run(signals.stop), name="outbound-sync"),
                asyncio.create_task(outbound.sync.listen(signals.stop), name="outbound-listen"),
                asyncio.create_task(outbound.receipts.run(signals.stop), name="receipts"),
            ]
        if plan is not None:
            recovery = recover(runtime, plan, signals.stop, notify, _wait_for_schema)
            tasks.append(asyncio.create_task(recovery, name="offline-recovery"))
        for task in tasks[1:]:
            _stop_if_it_dies(task, signals)
        await signals.stop.wait()
        return ExitCode.FAILURE if signals.failure else ExitCode.OK
    finally:
        notify.stopping()
        signals.stop.set()
        for task in tasks:
            # The mirror finishes its tick (its SQLite work runs in a thread that a cancel
            # would not stop); the others are simply cancelled.
            if task.get_name() not in ("mirror", "messaging"):  # both save their progress
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, SHUTDOWN_DRAIN_SECONDS)
        if http is not None:
            await http.close()
        if runtime is not None:
            await shut_down(runtime, SHUTDOWN_DRAIN_SECONDS)
        keep_leases.set()
        if renewal is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(renewal, SHUTDOWN_DRAIN_SECONDS)
        await db.close()
        signals.uninstall()
        os.close(lock)
        log.info("daemon_stopped")
