"""The daemon's working parts and how they follow the registry.

Order for each company: lease (single writer) -> store (provisioned, restored) -> mirror ->
client (in a worker). A company that leaves goes the other way: client stopped, last changes
mirrored, lease given back. Nothing is stopped because PostgreSQL is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from wapool.cache import FallbackCache
from wapool.cleanup import sizes
from wapool.cleanup.scheduler import CleanupScheduler
from wapool.cleanup.service import CleanupService
from wapool.cleanup.telegram import TelegramNotifier
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.observability import alerts
from wapool.registry.company import Company
from wapool.registry.pairing import PairingRepository
from wapool.registry.registry import Registry
from wapool.registry.repository import CompanyRepository
from wapool.settings import Settings
from wapool.store.keeper import StoreKeeper
from wapool.store.mirror import Mirror
from wapool.store.pg_copy import Fence
from wapool.store.snapshot import Snapshot, snapshot_cache
from wapool.store.working_store import store_path
from wapool.supervisor.leases import Leases, default_holder
from wapool.supervisor.session import State
from wapool.supervisor.supervisor import OnTransition, Supervisor
from wapool.whatsapp import events as ev

log = logging.getLogger(__name__)


@dataclass
class Runtime:
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
        leases = Leases(
            db, settings.node_name or default_holder(settings.state_dir), settings.lease_seconds
        )
        mirror = Mirror(
            db,
            snapshots=snapshots,
            state_dir=settings.state_dir,
            snapshot_every=settings.cache_sweep_seconds,
            fence=Fence(leases.holder, leases.held),  # the same dict: always current epochs
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
        scheduler = CleanupScheduler(
            settings,
            cleanup.run,
            last_slot=cleanup.last_completed_slot,
            sample=lambda: sizes.sample(db, datetime.now(UTC).date()),
        )
        return cls(
            settings, registry, snapshots, leases, mirror, keeper, supervisor, pairing,
            cleanup, scheduler,
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
