"""The daemon's composition root: it builds the working parts and runs the loops that follow
the registry and keep the leases. What operators see is rendered by ``views``; what a session's
transitions cause (and phone pairing requests) is in ``session_actions``; how the supervisor is
built from the settings, in ``supervisor.factory``.

Order for each company: lease (single writer) -> store (provisioned, restored) -> mirror ->
client (in a worker), started only while the lease is live (``bringup``). A company that leaves
goes the other way: client stopped, last changes mirrored, lease given back. Nothing is stopped
because PostgreSQL is down.

Leases are renewed by their own loop, started before the first lease is taken, so nothing slow
(provisioning, a long reconcile) can let them lapse; they are taken in batches no larger than
this daemon can bring up within half a lease (``bringup``), the next batch as soon as there is
room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from wapool.bringup import BringUp
from wapool.cache import FallbackCache
from wapool.cleanup.scheduler import CleanupScheduler
from wapool.cleanup.service import CleanupService
from wapool.cleanup.sizes import LatestSizes
from wapool.cleanup.telegram import TelegramNotifier
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.leases import Leases
from wapool.messaging import outbound_receipts
from wapool.messaging.outbound_service import OutboundService
from wapool.messaging.service import InboundMessaging
from wapool.outage.last_seen import LastSeenStore
from wapool.outage.offline_start import OfflineStart
from wapool.outage.resume import remember_leases, remember_registry
from wapool.registry.company import Company
from wapool.registry.fallback import Registry
from wapool.registry.pairing import PairingRepository
from wapool.registry.repository import CompanyRepository
from wapool.session_actions import pair_by_phone, session_actions
from wapool.settings import Settings
from wapool.store.keeper import StoreKeeper
from wapool.store.mirror import Mirror
from wapool.store.snapshot import Snapshot, snapshot_cache
from wapool.supervisor.factory import build_supervisor
from wapool.supervisor.reconciler import Supervisor

log = logging.getLogger(__name__)

#: While companies wait for this daemon to take their lease, the registry is followed this often.
BACKLOG_POLL_SECONDS = 0.25


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
    sizes: LatestSizes
    bringup: BringUp
    #: Inbound messages: inboxes -> inbound_messages (through the mirror) and the webhook.
    messaging: InboundMessaging
    #: The registry as last seen and the leases held, kept in the state directory.
    last_seen: LastSeenStore
    #: Set when this daemon started without PostgreSQL (``outage.offline_start``).
    offline: OfflineStart | None = None
    #: Companies wait for a lease this daemon will take as soon as it has room.
    backlog: bool = False
    #: Outbound messages (the /v1 API, the outbox, the sender); set by ``build``.
    outbound: OutboundService | None = None

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
        bringup = BringUp(leases, settings.max_concurrent_connects)
        mirror = Mirror(
            db,
            snapshots=snapshots,
            state_dir=settings.state_dir,
            snapshot_every=settings.cache_sweep_seconds,
            fence=leases.fence(),
        )
        actions = session_actions(registry.repository, pairing, db, leases.holder)
        delay = settings.simulated_store_delay_seconds
        keeper = StoreKeeper(
            db, settings.state_dir, mirror, snapshots,
            delay=delay if settings.whatsapp_backend == "simulated" else 0.0,
            prekey_gap=settings.prekey_restore_gap,
            parallel=settings.max_concurrent_connects,
        )  # fmt: skip
        cleanup = CleanupService(db, settings, notifier=TelegramNotifier.from_settings(settings))
        latest = LatestSizes(db)
        scheduler = CleanupScheduler(
            settings, cleanup.run, last_slot=cleanup.last_completed_slot, sample=latest.take,
            resume=cleanup.resume_interrupted,
        )  # fmt: skip
        messaging = InboundMessaging(settings, db, mirror, mirror.fence)
        messaging.consumers.append(outbound_receipts.CONSUMER)  # receipts -> outbound statuses
        supervisor = build_supervisor(settings, actions, bringup)
        return cls(
            db, settings, registry, snapshots, leases, mirror, keeper, supervisor, pairing,
            cleanup, scheduler, latest, bringup, messaging,
            LastSeenStore(settings.state_dir, leases.holder),
            outbound=OutboundService(settings, db, leases, supervisor, messaging.cursors),
        )  # fmt: skip

    def __post_init__(self) -> None:
        # A client whose store failed restarts only once the keeper has repaired the store.
        self.supervisor.repair = self.keeper.recover
        self.supervisor.inbox_listeners.append(self.messaging.on_inbox)

    async def follow(self, companies: list[Company]) -> None:
        """Take the next batch of leases, provision their stores, run what we hold and want."""
        active = {c.id for c in companies}
        self.backlog = await self.bringup.take(active - self.leases.held.keys())
        wanted = active & self.leases.held.keys()
        leaving = self.supervisor.want(wanted & self.keeper.ready)
        for company in leaving:
            await self.supervisor.stop(company)
        if leaving:
            await self.mirror.drain(timeout=5.0)
        await self.keeper.reconcile(wanted)
        wanted = active & self.leases.held.keys()  # a lease may have been lost meanwhile
        self.messaging.serve(wanted & self.keeper.ready)
        for company in self.supervisor.want(wanted & self.keeper.ready):
            await self.supervisor.stop(company)
        with contextlib.suppress(DatabaseUnavailable):
            await self.leases.release(self.leases.held.keys() - active)
        remember_leases(self.last_seen, self.leases.held)

    async def active_companies(self) -> list[Company]:
        """The registry (PostgreSQL, else the outage cache); what PostgreSQL confirmed is
        also written to the state directory. Raises ``DatabaseUnavailable``."""
        companies = await self.registry.active_companies()
        if self.db.health.snapshot().up:
            await remember_registry(self.db, self.last_seen, companies)
        return companies

    async def reconcile_loop(self, stop: asyncio.Event, changed: asyncio.Event) -> None:
        """Every sweep interval, or at once when the registry changes: refresh and follow it.

        While companies wait for a lease this daemon will take (a backlog), much more often; and
        when a store's provisioning is due for a retry (its backoff), then."""
        every = self.settings.cache_sweep_seconds
        while not stop.is_set():
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())}
            timeout = min(every, BACKLOG_POLL_SECONDS) if self.backlog else every
            timeout = min(timeout, self.keeper.retry_in(timeout))
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if stop.is_set():
                return
            changed.clear()
            self.registry.cache.sweep()
            self.snapshots.sweep()
            try:
                companies = await self.active_companies()
            except DatabaseUnavailable:
                self.backlog = False
                continue  # keep what runs
            await self.follow(companies)
            await pair_by_phone(self.pairing, self.supervisor)

    async def renew_loop(self, stop: asyncio.Event) -> None:
        """Keep our leases; a company whose lease another daemon took is stopped at once.

        Runs from before the first lease is taken until ``stop`` (set after the clients
        stopped, not when the daemon is asked to stop) and does nothing slow itself, so
        renewals never wait for provisioning, a reconcile or a slow client stop."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.leases.renew_every)
            try:
                lost = await self.leases.renew()
            except DatabaseUnavailable:
                continue  # an outage alone never stops a client
            await self.lost(lost)

    async def lost(self, companies: list[str]) -> None:
        """Leases another daemon took over: stop those clients at once, keep what their stores
        still owe aside (never applied over the new holder's copy)."""
        for company in companies:
            await self.supervisor.stop(company)
            await self.keeper.set_aside(company, "lease taken over by another daemon")
        remember_leases(self.last_seen, self.leases.held)

    async def shutdown(self, drain_seconds: float) -> None:
        self.cleanup.stop.set()  # a running cleanup stops at its next batch (milliseconds)
        await self.scheduler.stop(timeout=drain_seconds)
        if self.outbound is not None:  # no new sends; those in flight answered (bounded)
            await self.outbound.stop_sending(drain_seconds / 2)
        await self.supervisor.close()  # clients stop (bounded) before the last drain
        log.info("clients_stopped")
        drained = await self.mirror.drain(timeout=drain_seconds)
        log.info("mirror_final_drain", extra={"drained": drained})
        self.mirror.close()
        self.messaging.close()
        if self.outbound is not None:  # statuses mirrored, queued messages handed back
            await self.outbound.close()
        if drained:  # hand the companies over at once; otherwise let the leases expire
            with contextlib.suppress(DatabaseUnavailable):
                await self.leases.release()
        remember_leases(self.last_seen, self.leases.held)
