"""The daemon's stop, in an order that loses nothing: ``shut_down``."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from wapool.errors import DatabaseUnavailable
from wapool.outage.resume import remember_leases

if TYPE_CHECKING:
    from wapool.runtime import Runtime

log = logging.getLogger(__name__)


async def shut_down(rt: Runtime, drain_seconds: float) -> None:
    """Stop in order: cleanup, sends, clients, the last drain, then give the leases back (at
    once when everything was mirrored; otherwise they are left to expire) and leave the
    nodes table."""
    rt.cleanup.stop.set()  # a running cleanup stops at its next batch (milliseconds)
    await rt.scheduler.stop(timeout=drain_seconds)
    if rt.outbound is not None:  # no new sends; those in flight answered (bounded)
        await rt.outbound.stop_sending(drain_seconds / 2)
    await rt.supervisor.close()  # clients stop (bounded) before the last drain
    log.info("clients_stopped")
    drained = await rt.mirror.drain(timeout=drain_seconds)
    log.info("mirror_final_drain", extra={"drained": drained})
    rt.mirror.close()
    rt.messaging.close()
    if rt.outbound is not None:  # statuses mirrored, queued messages handed back
        await rt.outbound.close()
    if drained:  # hand the companies over at once; otherwise let the leases expire
        with contextlib.suppress(DatabaseUnavailable):
            await rt.leases.hand_over(dict.fromkeys(rt.leases.held))
    await remember_leases(rt.last_seen, rt.leases.held)
    with contextlib.suppress(DatabaseUnavailable):
        await rt.nodes.deregister()
