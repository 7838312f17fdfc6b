"""The daemon's composition root: it holds the working parts and runs the loop that follows
the registry. What operators see is rendered by ``views``; what a session's
transitions cause (and phone pairing requests) is in ``session_actions``; how the supervisor is
built from the settings, in ``supervisor.factory``; the stop in order, in ``shutdown``.

Order for each company: lease (single writer) -> store (provisioned, restored) -> mirror ->
client (in a worker), started only while the lease is live (``bringup``). A company that leaves
goes the other way: client stopped, last changes mirrored, lease given back. Nothing is stopped
because PostgreSQL is down.

Leases are renewed by their own loop, started before the first lease is taken, so nothing slow
(provisioning, a long reconcile) can let them lapse; they are taken in batches no larger than
this daemon can bring up within half a lease (``bringup``), the next batch as soon as there is
room.

Several daemons share the companies (``balance``): at each reconcile this one reads the live
nodes (``nodes``), takes free leases only up to its fair share, and hands its excess over
gracefully (``handoff``), a batch at a time. A heartbeat loop keeps its ``nodes`` row fresh and
wakes the reconcile when the set of nodes changes (``keepalive``, with the renewals). The
parts are built from the settings in ``wiring``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from wapool import balance
from wapool.bringup import BringUp
from wapool.cache import FallbackCache
from wapool.cleanup.scheduler import CleanupScheduler
from wapool.cleanup.service import CleanupService
from wapool.cleanup.sizes import LatestSizes
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.handoff import Handoffs
from wapool.leases import Leases
from wapool.messaging.outbound_service import OutboundService
from wapool.messaging.service import InboundMessaging
from wapool.nodes import ClusterView, Nodes
from wapool.outage.last_seen import LastSeenStore
from wapool.outage.offline_start import OfflineStart
from wapool.outage.resume import remember_leases, remember_registry
from wapool.registry.company import Company
from wapool.registry.fallback import Registry
from wapool.registry.pairing import PairingRepository
from wapool.session_actions import pair_by_phone
from wapool.settings import Settings
from wapool.store import left_behind
from wapool.store.keeper import StoreKeeper
from wapool.store.mirror import Mirror
from wapool.store.snapshot import Snapshot
from wapool.supervisor.reconciler import Supervisor
from wapool.supervisor.session import State

log = logging.getLogger(__name__)

#: While companies wait for this daemon to take their lease, the registry is followed this often.
BACKLOG_POLL_SECONDS = 0.25
#: How long after another daemon's lease is due to expire the registry is followed again.
LOOK_AGAIN_MARGIN = 0.25


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
    nodes: Nodes
    handoffs: Handoffs
    #: Inbound messages: inboxes -> inbound_messages (through the mirror) and the webhook.
    messaging: InboundMessaging
    #: The registry as last seen and the leases held, kept in the state directory.
    last_seen: LastSeenStore
    #: Set when this daemon started without PostgreSQL (``outage.offline_start``).
    offline: OfflineStart | None = None
    #: Companies wait for a lease this daemon will take as soon as it has room, or more are
    #: to be handed over.
    backlog: bool = False
    #: This node's fair share at the last reconcile (None: not computed yet).
    share: int | None = None
    #: The cluster as last read (nodes, draining, moves).
    view: ClusterView | None = None
    #: Outbound messages (the /v1 API, the outbox, the sender); set by ``build``.
    outbound: OutboundService | None = None
    #: Companies whose lease this daemon held before it was killed, their store still here,
    #: and nobody else holding the lease when last looked (``leave_behind``).
    unclaimed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # A client whose store failed restarts only once the keeper has repaired the store.
        self.supervisor.repair = self.keeper.recover
        self.supervisor.inbox_listeners.append(self.messaging.on_inbox)

    async def follow(self, companies: list[Company]) -> None:
        """Take the next batch of leases up to our share, hand the excess over, provision the
        stores, run what we hold and want."""
        active = {c.id for c in companies}
        plan = await self._plan(active)
        taken = await self.bringup.take(
            active - self.leases.held.keys(), None if plan is None else plan.take
        )
        self.backlog = self.bringup.backlog
        for company in taken:
            self.handoffs.stats.lease_taken(company)
        with contextlib.suppress(DatabaseUnavailable):
            await self.leave_behind()  # old stores of leases taken since, by us or another
        handed: list[str] = []
        if (plan is not None and plan.hand_over) or self.handoffs.pending:
            handed = await self.handoffs.run(plan.hand_over if plan else {})
        if plan is not None and (plan.more or self.handoffs.pending):
            self.backlog = True
        wanted = active & self.leases.held.keys() - self.handoffs.pending.keys()
        leaving = self.supervisor.want(await self._startable(wanted & self.keeper.ready))
        for company in leaving:
            await self.supervisor.stop(company)
        if leaving:
            await self.mirror.drain(timeout=5.0)
        await self.keeper.reconcile(wanted | self.handoffs.pending.keys())
        await self.handoffs.discard_stores(handed)
        # A lease may have been lost meanwhile.
        wanted = active & self.leases.held.keys() - self.handoffs.pending.keys()
        self.messaging.serve(wanted & self.keeper.ready)
        for company in self.supervisor.want(await self._startable(wanted & self.keeper.ready)):
            await self.supervisor.stop(company)
        with contextlib.suppress(DatabaseUnavailable):
            await self.leases.release(self.leases.held.keys() - active)
        await remember_leases(self.last_seen, self.leases.held)

    async def leave_behind(self) -> None:
        """The stores the last run (killed) left of companies another daemon took over since
        are kept aside or removed (``store.left_behind``); those whose lease nobody else holds
        yet are looked at again at each ``follow`` until this daemon takes the lease back or
        another does. Raises ``DatabaseUnavailable``."""
        if not self.unclaimed:
            return
        watched = len(self.unclaimed)
        count, self.unclaimed = await left_behind.look(
            self.db, self.settings.state_dir, self.leases.holder, self.unclaimed, self.leases.held
        )
        if count:
            log.info("stores_left_behind", extra={"count": count, "watched": watched})

    async def active_companies(self) -> list[Company]:
        """The registry (PostgreSQL, else the outage cache); what PostgreSQL confirmed is
        also written to the state directory. Raises ``DatabaseUnavailable``."""
        companies = await self.registry.active_companies()
        if self.db.health.snapshot().up:
            await remember_registry(self.db, self.last_seen, companies)
        return companies

    async def _plan(self, active: set[str]) -> balance.Plan | None:
        """Our share and what to hand over now; None while PostgreSQL cannot say."""
        try:
            self.view = await self.nodes.view()
        except DatabaseUnavailable:
            return None
        connected = {c for c, s in self.supervisor.sessions.items() if s.state is State.CONNECTED}
        held = self.leases.held.keys() - self.handoffs.pending.keys()
        plan = balance.plan(
            self.leases.holder, len(active), held, self.view,
            slack=self.settings.balance_slack, batch=self.settings.handoff_batch,
            not_connected=held - connected,
        )  # fmt: skip
        self.share = plan.share
        return plan

    async def _startable(self, companies: set[str]) -> set[str]:
        """Those whose store is at or beyond the sequence they were handed over at."""
        return {c for c in companies if await self.handoffs.reached(c)}

    async def reconcile_loop(self, stop: asyncio.Event, changed: asyncio.Event) -> None:
        """Every sweep interval, or at once when the registry changes: refresh and follow it.

        While companies wait for a lease this daemon will take (a backlog), much more often; and
        when a store's provisioning is due for a retry (its backoff), then."""
        every = self.settings.cache_sweep_seconds
        while not stop.is_set():
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())}
            timeout = min(every, BACKLOG_POLL_SECONDS) if self.backlog else every
            timeout = min(timeout, self.keeper.retry_in(timeout))
            if self.bringup.look_again is not None:  # a lease our share wants may expire then
                timeout = min(timeout, self.bringup.look_again + LOOK_AGAIN_MARGIN)
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

    async def lost(self, companies: list[str]) -> None:
        """Leases another daemon took over: stop those clients at once, keep what their stores
        still owe aside (never applied over the new holder's copy)."""
        for company in companies:
            await self.supervisor.stop(company)
            await self.keeper.set_aside(company, "lease taken over by another daemon")
        await remember_leases(self.last_seen, self.leases.held)
