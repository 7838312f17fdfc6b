"""The daemon's working parts and how they follow the registry.

Order for each company: lease (single writer) -> store (provisioned, restored) -> mirror ->
client (in a worker). A company that leaves goes the other way: client stopped, last changes
mirrored, lease given back. Nothing is stopped because PostgreSQL is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wapool.cache import FallbackCache
from wapool.cleanup import sizes
from wapool.cleanup.scheduler import CleanupScheduler
from wapool.cleanup.service import CleanupService
from wapool.cleanup.telegram import TelegramNotifier
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.leases import Leases
from wapool.observability import alerts
from wapool.observability.metrics import Exposition
from wapool.registry.company import Company
from wapool.registry.pairing import PairingRepository
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

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    db: Database
    settings: Settings
    registry: Registry
    snapshots: FallbackCache[str, Snapshot]
    leases: Leases
    mirror: Mirror
    keeper: StoreKeeper
    supervisor: Supervisor
    pairing: PairingRepository
    cleanup: CleanupService
    scheduler: CleanupScheduler
    #: The latest database size sample (per company and table), for /metrics.
    sizes: list[sizes.SizeRow]

    @classmethod
    def build(cls, settings: Settings, db: Database) -> Runtime:
        registry = Registry(
            CompanyRepository(db),
            FallbackCache[str, list[Company]](
                settings.cache_ttl_seconds, settings.cache_max_entries
            ),
        )
        snapshots = snapshot_cache(settings.cache_ttl_seconds, settings.snapshot_cache_mb << 20)
        pairing = PairingRepository(db)
        leases = Leases(db, settings.lease_holder, settings.lease_seconds)
        mirror = Mirror(
            db,
            snapshots=snapshots,
            state_dir=settings.state_dir,
            snapshot_every=settings.cache_sweep_seconds,
            fence=leases.fence(),
        )
        supervisor = Supervisor(
            settings.whatsapp_backend,
            settings.companies_per_worker,
            lambda company: store_path(settings.state_dir, company),
            connect_limit=settings.max_concurrent_connects,
            heartbeat_timeout=settings.worker_heartbeat_timeout_seconds,
            backend_args=(
                (str(settings.simulated_churn_per_second), settings.simulated_pairing)
                if settings.whatsapp_backend == "simulated"
                else ()
            ),
            on_transition=session_actions(registry.repository, pairing, db, leases.holder),
        )
        keeper = StoreKeeper(db, settings.state_dir, mirror, snapshots)
        cleanup = CleanupService(db, settings, notifier=TelegramNotifier.from_settings(settings))
        latest: list[sizes.SizeRow] = []

        async def sample() -> None:
            latest[:] = await sizes.sample(db, datetime.now(UTC).date())

        scheduler = CleanupScheduler(
            settings, cleanup.run, last_slot=cleanup.last_completed_slot, sample=sample
        )
        return cls(
            db, settings, registry, snapshots, leases, mirror, keeper, supervisor, pairing,
            cleanup, scheduler, latest,
        )  # fmt: skip

    async def follow(self, companies: list[Company]) -> None:
        active = {c.id for c in companies}
        with contextlib.suppress(DatabaseUnavailable):
            await self.leases.acquire(active)
        wanted = active & self.leases.held.keys()
        leaving = self.supervisor.want(wanted & self.keeper.ready)
        for company in leaving:
            await self.supervisor.stop(company)
        if leaving:
            await self.mirror.drain(timeout=5.0)
        await self.keeper.reconcile(wanted)
        for company in self.supervisor.want(wanted & self.keeper.ready):
            await self.supervisor.stop(company)
        with contextlib.suppress(DatabaseUnavailable):
            await self.leases.release(self.leases.held.keys() - active)

    async def reconcile_loop(self, stop: asyncio.Event, changed: asyncio.Event) -> None:
        """Every sweep interval, or at once when the registry changes: refresh and follow it."""
        every = self.settings.cache_sweep_seconds
        while not stop.is_set():
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())}
            await asyncio.wait(waiters, timeout=every, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if stop.is_set():
                return
            changed.clear()
            self.registry.cache.sweep()
            self.snapshots.sweep()
            try:
                companies = await self.registry.active_companies()
            except DatabaseUnavailable:
                continue  # keep what runs
            await self.follow(companies)
            await self.pair_by_phone()

    async def pair_by_phone(self) -> None:
        """Pass pending phone-number pairing requests to their clients once they show a QR."""
        try:
            requests = await self.pairing.open_requests()
        except DatabaseUnavailable:
            return
        for request in requests:
            company = request.company_id
            session = self.supervisor.sessions.get(company)
            ready = (
                session is not None
                and session.state is State.PAIRING  # connected to WhatsApp, showing QR codes
                and self.supervisor.pool.worker_of(company) is not None
            )
            if request.phone and not request.phone_sent and ready:
                await self.supervisor.pool.command(company, "pair_phone", phone=request.phone)
                await self.pairing.mark_phone_sent(company)

    async def renew_loop(self, stop: asyncio.Event) -> None:
        """Keep our leases; a company whose lease another daemon took is stopped at once."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.leases.seconds / 3)
            try:
                lost = await self.leases.renew()
            except DatabaseUnavailable:
                continue  # an outage alone never stops a client
            for company in lost:
                await self.supervisor.stop(company)
            if lost:
                await self.keeper.reconcile(self.leases.held.keys() & self.keeper.ready)

    # -- what operators see (HTTP) --------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Ready: PostgreSQL reachable (or down for less than the cache TTL) and no shard down."""
        health = self.db.health.snapshot()
        down_for = 0.0 if health.up else time.monotonic() - health.since_monotonic
        if down_for > self.settings.cache_ttl_seconds:
            return (
                False,
                f"PostgreSQL down for {down_for:.0f} s (cache grace {self.settings.cache_ttl_seconds:g} s)",
            )
        failed = sorted(c for c, s in self.supervisor.sessions.items() if s.state is State.FAILED)
        if failed:
            return False, f"worker down for {', '.join(failed)}"
        return True, "ready"

    def metrics(self) -> str:
        out = Exposition()
        sessions = self.supervisor.sessions
        out.family("wapool_sessions", "gauge", "Sessions by state.",
                   [({"state": st.value}, float(sum(1 for s in sessions.values() if s.state is st)))
                    for st in State])  # fmt: skip
        out.family("wapool_session_reconnects_total", "counter", "Reconnects scheduled.",
                   [({"company": c}, float(s.reconnects)) for c, s in sessions.items()])  # fmt: skip
        out.family("wapool_messages_received_total", "counter", "Messages received.",
                   [({"company": c}, float(s.messages)) for c, s in sessions.items()])  # fmt: skip
        lag = self.mirror.stats.companies
        out.family("wapool_mirror_lag_seconds", "gauge", "Age of the oldest change not yet in PostgreSQL.",
                   [({"company": c}, v.lag_seconds) for c, v in lag.items()])  # fmt: skip
        out.family("wapool_mirror_pending_rows", "gauge", "Change-log entries not yet in PostgreSQL.",
                   [({"company": c}, float(v.pending_rows)) for c, v in lag.items()])  # fmt: skip
        out.family("wapool_mirror_rows_applied_total", "counter", "Rows written to PostgreSQL.",
                   [({}, float(self.mirror.stats.rows_applied))])  # fmt: skip
        for name, cache in (
            ("registry", self.registry.cache.stats()),
            ("snapshots", self.snapshots.stats()),
        ):
            labels = {"cache": name}
            out.family(
                f"wapool_cache_{name}_hits_total",
                "counter",
                "Outage fallbacks served.",
                [(labels, float(cache.hits))],
            )
            out.family(
                f"wapool_cache_{name}_misses_total",
                "counter",
                "Outage fallbacks not possible.",
                [(labels, float(cache.misses))],
            )
            out.family(f"wapool_cache_{name}_last_hit_age_seconds", "gauge", "Age of the last value served.",
                       [(labels, cache.last_hit_age_seconds or 0.0)])  # fmt: skip
        health = self.db.health.snapshot()
        out.family("wapool_database_up", "gauge", "PostgreSQL reachable.", [({}, float(health.up))])
        out.family(
            "wapool_database_outages_total",
            "counter",
            "Outages seen.",
            [({}, float(health.outages))],
        )
        out.family("wapool_database_outage_seconds_total", "counter", "Seconds without PostgreSQL.",
                   [({}, health.outage_seconds_total)])  # fmt: skip
        out.family("wapool_worker_restarts_total", "counter", "Worker processes restarted.",
                   [({}, float(self.supervisor.pool.restarts))])  # fmt: skip
        out.family("wapool_workers", "gauge", "Worker processes running.",
                   [({}, float(len(self.supervisor.pool.workers)))])  # fmt: skip
        last = self.cleanup.last
        out.family("wapool_cleanup_last_deleted_rows", "gauge", "Rows deleted by the last cleanup.",
                   [({}, float(last.rows if last else 0))])  # fmt: skip
        return out.render() + sizes.metrics_text(self.sizes)

    async def load_sizes(self) -> None:
        """The latest size sample already recorded (the daily sample refreshes it)."""
        with contextlib.suppress(DatabaseUnavailable):
            rows = await self.db.fetch("SELECT max(sampled_on) FROM store_size_history")
            if rows and rows[0][0] is not None:
                self.sizes[:] = await sizes.growth(self.db, rows[0][0])

    def status(self) -> dict[str, Any]:
        now_mono, now_wall = time.monotonic(), time.time()
        lag = self.mirror.stats.companies
        companies = {}
        for company, session in sorted(self.supervisor.sessions.items()):
            mirror = lag.get(company)
            companies[company] = {
                "state": session.state.value,
                "since": now_wall - (now_mono - session.since) if session.since else None,
                "last_error": session.last_error,
                "paired_jid": session.paired_jid,
                "mirror_lag_seconds": mirror.lag_seconds if mirror else None,
                "pending_rows": mirror.pending_rows if mirror else None,
                "snapshot_age_seconds": self.snapshots.peek_age(company),
            }
        health = self.db.health.snapshot()
        return {
            "node": self.leases.holder,
            "database": {"up": health.up, "last_error": health.last_error},
            "companies": companies,
        }

    async def shutdown(self, drain_seconds: float) -> None:
        self.cleanup.stop.set()  # a running cleanup stops at its next batch (milliseconds)
        await self.scheduler.stop(timeout=drain_seconds)
        await self.supervisor.close()  # clients stop (bounded) before the last drain
        log.info("clients_stopped")
        drained = await self.mirror.drain(timeout=drain_seconds)
        log.info("mirror_final_drain", extra={"drained": drained})
        self.mirror.close()
        if drained:  # hand the companies over at once; otherwise let the leases expire
            with contextlib.suppress(DatabaseUnavailable):
                await self.leases.release()


async def record_state(
    db: Database, company: str, state: State, event: ev.WhatsAppEvent, holder: str
) -> None:
    error = getattr(event, "reason", None)
    await db.execute(
        "INSERT INTO session_states (company_id, state, since, last_error, holder) "
        "VALUES (%(c)s, %(s)s, now(), %(e)s, %(h)s) ON CONFLICT (company_id) DO UPDATE SET "
        "since = CASE WHEN session_states.state = EXCLUDED.state THEN session_states.since "
        "ELSE now() END, state = EXCLUDED.state, "
        "last_error = coalesce(EXCLUDED.last_error, session_states.last_error), "
        "holder = EXCLUDED.holder, updated_at = now()",
        {"c": company, "s": state.value, "e": error, "h": holder},
    )


def session_actions(
    repository: CompanyRepository, pairing: PairingRepository, db: Database, holder: str
) -> OnTransition:
    """What the daemon does when a session changes state: status, registry, pairing, alerts."""

    async def act(company: str, state: State, event: ev.WhatsAppEvent) -> None:
        with contextlib.suppress(DatabaseUnavailable):
            await record_state(db, company, state, event, holder)
        match event:
            case ev.QrCode(code=code):
                with contextlib.suppress(DatabaseUnavailable):
                    await pairing.publish_code(company, "qr", code)
            case ev.PairCode(code=code):
                with contextlib.suppress(DatabaseUnavailable):
                    await pairing.publish_code(company, "pair_code", code)
            case ev.Paired(jid=jid):
                with contextlib.suppress(DatabaseUnavailable):
                    await repository.set_paired_jid(company, jid)
                    await pairing.finish(company, jid=jid)
            case ev.LoggedOut(reason=reason):
                alerts.session_logged_out(company, reason)
                with contextlib.suppress(DatabaseUnavailable):
                    await repository.set_paired_jid(company, None)
                    await pairing.finish(company, error=f"logged out: {reason}")
            case ev.StreamReplaced():
                alerts.session_replaced(company)
            case ev.TemporaryBan(code=code, expires_in=seconds):
                alerts.session_banned(company, code, seconds)
            case ev.ClientOutdated():
                alerts.client_outdated(company)
            case _:
                pass

    return act
