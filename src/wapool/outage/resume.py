"""The runtime's side of a start without PostgreSQL: keeping the state directory's registry and
leases current, resuming from them, and re-validating every lease when PostgreSQL returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from wapool.backoff import Backoff
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.observability.sdnotify import Notifier
from wapool.outage import offline_start
from wapool.outage.last_seen import LastSeenStore
from wapool.outage.offline_start import OfflineStart
from wapool.registry.company import Company
from wapool.settings import Settings

if TYPE_CHECKING:
    from wapool.runtime import Runtime

#: The daemon's wait for PostgreSQL and its schema check (None: stopped while waiting).
WaitForSchema = Callable[
    [Database, asyncio.Event, Notifier, Settings], Coroutine[Any, Any, int | None]
]

log = logging.getLogger(__name__)


#: A node that sent a heartbeat this recently counts as another daemon of the deployment.
OTHER_NODE_SECONDS = 600


async def remember_registry(db: Database, store: LastSeenStore, companies: list[Company]) -> None:
    """Write the registry PostgreSQL just gave to the state dir, with the other daemons seen:
    those holding leases, and the nodes that sent a heartbeat in the last ten minutes (a
    standby holding none counts too: it could take companies over in a partition)."""
    try:
        rows = await db.fetch(
            "SELECT holder FROM company_leases WHERE expires_at > now() AND holder <> '' "
            "UNION SELECT name FROM nodes WHERE heartbeat_at > now() - make_interval(secs => %s)",
            (OTHER_NODE_SECONDS,),
        )
    except DatabaseUnavailable:
        return  # confirmed only with both answers
    others = {str(r[0]) for r in rows}
    await _save(store, store.registry_path, partial(store.save_registry, list(companies), others))


async def remember_leases(store: LastSeenStore, held: Mapping[str, int]) -> None:
    """Write the leases held now to the state dir (nothing when they did not change)."""
    await _save(store, store.leases_path, partial(store.save_leases, dict(held)))


async def _save(store: LastSeenStore, path: Path, save: Callable[[int], None]) -> None:
    """Run ``save`` off the event loop (it writes and fsyncs a file and its folder), after the
    saves asked for before it (a later state is never overwritten by an earlier one: not even
    by one whose task was cancelled while its thread ran on, see ``LastSeenStore.ask``)."""
    order = store.ask()
    async with store.turn:
        try:
            await asyncio.to_thread(save, order)
        except OSError as exc:
            log.error("last_seen_write_failed", extra={"path": str(path), "error": str(exc)})


def start_offline(runtime: Runtime, plan: OfflineStart, error: str) -> None:
    """Hold the leases held before the restart and warn once; ``follow`` then resumes them."""
    runtime.offline = plan
    runtime.last_seen.confirmed_at = plan.last_seen.registry_at
    runtime.leases.adopt(plan.resumed)
    runtime.mirror.quiet = True  # the one warning below covers every company
    runtime.keeper.offline = True
    plan.announce(error, time.time())


async def revalidate(runtime: Runtime, plan: OfflineStart) -> None:
    """PostgreSQL is back: renew every adopted lease before the mirror applies anything (the
    mirror skips unconfirmed leases): the same epoch is kept, a lease taken over meanwhile
    stops its client at once and keeps its store's changes aside. Raises
    ``DatabaseUnavailable`` if PostgreSQL went away again."""
    await runtime.lost(await runtime.leases.renew())
    runtime.keeper.offline = False
    kept = sorted(set(plan.resumed) & runtime.leases.held.keys())
    lost = set(plan.resumed) - runtime.leases.held.keys()  # the renew loop may have seen some
    pending = sum(lag.pending_rows for lag in runtime.mirror.stats.companies.values())
    runtime.mirror.quiet = False
    runtime.mirror.wake.set()
    log.info("leases_revalidated", extra={"kept": len(kept), "lost": ", ".join(sorted(lost))})
    plan.recovered(kept, sorted(lost), pending, time.time())


def offline_plan(settings: Settings) -> OfflineStart | None:
    """What to resume without PostgreSQL (the policy, the state directory), or None."""
    store = LastSeenStore(settings.state_dir, settings.lease_holder)
    return offline_start.plan(settings.partition_policy, store.load(), time.time())


async def recover(
    runtime: Runtime,
    plan: OfflineStart,
    stop: asyncio.Event,
    notify: Notifier,
    wait_for_schema: WaitForSchema,
) -> None:
    """Started without PostgreSQL: wait for it, check the schema, re-validate every lease."""
    settings, backoff = runtime.settings, Backoff(base=0.5, cap=5.0)
    while not stop.is_set():
        if await wait_for_schema(runtime.db, stop, notify, settings) is None:
            return
        try:
            await revalidate(runtime, plan)
        except (DatabaseUnavailable, psycopg.errors.QueryCanceled):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next_delay())
            continue
        notify.status(f"running {len(runtime.keeper.ready)} companies")
        return
