"""What keeps this daemon's claims alive: lease renewals and the node's heartbeat, each in its
own loop, independent of anything slow (provisioning, a reconcile, a client stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import psycopg

from wapool.errors import DatabaseUnavailable
from wapool.observability.redact import describe_error

if TYPE_CHECKING:
    from wapool.runtime import Runtime

log = logging.getLogger(__name__)

#: How long after another node's heartbeat is due to go stale the nodes are read again.
STALE_MARGIN = 0.25


async def renew_loop(rt: Runtime, stop: asyncio.Event) -> None:
    """Keep our leases; a company whose lease another daemon took is stopped at once.

    Runs from before the first lease is taken until ``stop`` (set after the clients
    stopped, not when the daemon is asked to stop) and does nothing slow itself, so
    renewals never wait for provisioning, a reconcile or a slow client stop."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rt.leases.renew_every)
        try:
            lost = await rt.leases.renew()
        except DatabaseUnavailable:
            continue  # an outage alone never stops a client
        except psycopg.errors.QueryCanceled as exc:
            # Waited too long on lease rows a long mirror transaction holds (a loaded host):
            # the renewal is retried, the leases still last two more renewals.
            log.warning("lease_renewal_slow", extra={"error": describe_error(exc)})
            continue
        await rt.lost(lost)


async def heartbeat_loop(rt: Runtime, stop: asyncio.Event, changed: asyncio.Event) -> None:
    """Keep this node's row fresh (every third of a lease, like the renewals); wake the
    reconcile when the live nodes change, this node is told to drain, or a move waits."""
    seen: tuple[frozenset[str], bool] | None = None
    while not stop.is_set():
        try:
            await rt.nodes.beat(len(rt.leases.held))
            view = await rt.nodes.view()
        except DatabaseUnavailable:
            view = None
        if view is not None and ((view.sharing, view.draining) != seen or view.moves):
            seen = (view.sharing, view.draining)
            changed.set()
        pause = rt.leases.renew_every
        if view is not None and view.stale_in is not None:  # a node may die then: see it soon
            pause = max(STALE_MARGIN, min(pause, view.stale_in + STALE_MARGIN))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)
