"""The daemon's parts built from the settings and wired together (``build_runtime``)."""

from __future__ import annotations

import socket

from wapool.bringup import BringUp
from wapool.cache import FallbackCache
from wapool.cleanup.scheduler import CleanupScheduler
from wapool.cleanup.service import CleanupService
from wapool.cleanup.sizes import LatestSizes
from wapool.cleanup.telegram import TelegramNotifier
from wapool.db.pool import Database
from wapool.handoff import FleetStats, Handoffs
from wapool.leases import Leases
from wapool.messaging import outbound_receipts
from wapool.messaging.outbound_service import OutboundService
from wapool.messaging.service import InboundMessaging
from wapool.nodes import Nodes
from wapool.outage.last_seen import LastSeenStore
from wapool.registry.company import Company
from wapool.registry.fallback import Registry
from wapool.registry.pairing import PairingRepository
from wapool.registry.repository import CompanyRepository
from wapool.runtime import Runtime
from wapool.session_actions import session_actions
from wapool.settings import Settings
from wapool.store.keeper import StoreKeeper
from wapool.store.mirror import Mirror
from wapool.store.snapshot import snapshot_cache
from wapool.supervisor.factory import build_supervisor
from wapool.supervisor.reconciler import OnTransition
from wapool.supervisor.session import State
from wapool.whatsapp import events as ev


def build_runtime(settings: Settings, db: Database) -> Runtime:
    registry = Registry(
        CompanyRepository(db),
        FallbackCache[str, list[Company]](settings.cache_ttl_seconds, settings.cache_max_entries),
    )
    snapshots = snapshot_cache(settings.cache_ttl_seconds, settings.snapshot_cache_mb << 20)
    pairing = PairingRepository(db)
    leases = Leases(
        db, settings.lease_holder, settings.lease_seconds,
        takeover_grace=settings.lease_seconds / 2,  # the next renewal plus its margin
    )  # fmt: skip
    bringup = BringUp(leases, settings.max_concurrent_connects)
    mirror = Mirror(
        db,
        snapshots=snapshots,
        state_dir=settings.state_dir,
        snapshot_every=settings.cache_sweep_seconds,
        fence=leases.fence(),
    )
    fleet = FleetStats()
    actions = _timed(session_actions(registry.repository, pairing, db, leases.holder), fleet)
    delay = settings.simulated_store_delay_seconds
    keeper = StoreKeeper(
        db, settings.state_dir, mirror, snapshots,
        delay=delay if settings.whatsapp_backend == "simulated" else 0.0,
        prekey_gap=settings.prekey_restore_gap, handed=leases.handed_at,
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
    nodes = Nodes(db, leases.holder, settings.lease_seconds, _address(settings))
    outbound = OutboundService(settings, db, leases, supervisor, messaging.cursors, messaging.feed)
    # A handed-over company's queued messages go back to PostgreSQL for the next holder.
    handoffs = Handoffs(leases, supervisor, mirror, settings.state_dir, fleet,
                        before_release=outbound.sync.release)  # fmt: skip
    return Runtime(
        db, settings, registry, snapshots, leases, mirror, keeper, supervisor, pairing,
        cleanup, scheduler, latest, bringup, nodes, handoffs, messaging,
        LastSeenStore(settings.state_dir, leases.holder), outbound=outbound,
    )  # fmt: skip


def _timed(actions: OnTransition, fleet: FleetStats) -> OnTransition:
    """The session actions, timing each company from its lease to its client connected."""

    async def on_transition(company: str, state: State, event: ev.WhatsAppEvent) -> None:
        if state is State.CONNECTED:
            fleet.connected(company)
        await actions(company, state, event)

    return on_transition


def _address(settings: Settings) -> str:
    """How operators reach this node: its host name and HTTP address."""
    return f"{socket.gethostname()} http={settings.http_addr}"
