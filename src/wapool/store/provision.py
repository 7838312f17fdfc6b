"""Make a company's working store ready before its client starts.

The decision, in order (PostgreSQL is the system of record):

* the local store cannot be read *now* (permissions, locks, descriptors, I/O, a full disk)
  ->  ``StoreUnreadable``: retried with backoff and alerted, never replaced (see ``faults``);
* PostgreSQL has a copy, and the local store is missing, proven corrupt, belongs to another
  store identity, or is behind the copy  ->  restore from PostgreSQL, after saving to it what
  the old store still owes (``rescue``: a corrupt store's readable change log; what cannot be
  saved is named in a report beside the kept copy and alerted);
* PostgreSQL has no copy and there is no local store  ->  create one: a copy of the template
  neonize made for this whatsmeow schema version (``template``); a corrupt one whose change
  log can be read becomes the copy (``rescue``), else it is left alone;
* PostgreSQL is down and the local store is missing or corrupt  ->  restore from the cached
  snapshot if it is younger than the TTL and the old store owes nothing beyond it, else
  ``StoreUnavailable`` (retry with backoff, until PostgreSQL can take what it owes);
* otherwise the local store is used as it is (neonize upgrades its schema if it is not the
  template's).

Temporaries a killed restore left behind are removed first (``leftovers``).

One module over 250 lines: the decision between the local store, a restore and a new store
from the template is one ordered rule, kept in one place.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from wapool.cache import FallbackCache
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable, WapoolError
from wapool.leases import Fence
from wapool.observability import alerts
from wapool.store import pg_copy, restore, template
from wapool.store.capture import drop_capture, install_capture
from wapool.store.faults import Fault, StoreFault, as_fault
from wapool.store.fork import fork
from wapool.store.inspection import LocalState, inspect_local
from wapool.store.leftovers import remove_stale_temporaries
from wapool.store.monotonic import highest_prekey
from wapool.store.rescue import Report, read, rescue
from wapool.store.salvage import read_salvage
from wapool.store.snapshot import Snapshot
from wapool.store.template import SchemaMaker
from wapool.store.working_store import connection, prepare_dir
from wapool.whatsapp.neonize_store import create_schema

log = logging.getLogger(__name__)


class StoreUnavailable(WapoolError):
    """No usable working store and nothing to restore it from right now."""


class StoreUnreadable(StoreUnavailable):
    """The working store cannot be used now (``fault`` says why); provisioning is retried, and
    the store is only ever replaced once an inspection proves it broken."""

    def __init__(self, company_id: str, fault: StoreFault) -> None:
        super().__init__(f"working store of {company_id} is {fault}")
        self.fault = fault


@dataclass(frozen=True)
class Provisioned:
    path: Path
    action: str  # "kept", "created", "restored-postgres", "restored-cache"
    reason: str
    #: What a replaced store owed PostgreSQL: saved, or named as lost.
    report: Report | None = None


async def provision(
    db: Database,
    state_dir: Path,
    company_id: str,
    snapshots: FallbackCache[str, Snapshot] | None = None,
    make_schema: SchemaMaker = create_schema,
    fence: Fence | None = None,
    offline: bool = False,
    prekey_gap: int | None = 0,
) -> Provisioned:
    """``offline``: the daemon started without PostgreSQL; do not wait for it to fail.
    ``prekey_gap``: pre-key ids a restored store skips (``monotonic``); None when the copy is
    known complete (a graceful handoff: the previous holder drained it)."""
    path = prepare_dir(state_dir, company_id)
    await asyncio.to_thread(remove_stale_temporaries, path.parent)
    local = await asyncio.to_thread(inspect_local, path)
    if local.fault is not None and not local.fault.proven:
        raise StoreUnreadable(company_id, StoreFault(local.fault, local.detail or ""))
    try:
        if offline:
            raise DatabaseUnavailable("started without PostgreSQL")
        meta = await pg_copy.fetch_meta(db, company_id)
    except DatabaseUnavailable as exc:
        if local.usable:
            await _prepare_existing(company_id, state_dir, path, make_schema)
            return Provisioned(path, "kept", "PostgreSQL unavailable; local store is sound")
        gap = 0 if prekey_gap is None else prekey_gap  # a snapshot may lag: always see to it
        return await _from_snapshot(path, company_id, snapshots, local, str(exc), gap)

    reason = _restore_reason(local, meta)
    if reason is not None and (meta is not None or local.fault is Fault.CORRUPT):
        log.info("store_freshness", extra=_freshness(company_id, local, meta, "restore", reason))
        restoring = _Restoring(state_dir, path, company_id, meta, local, reason, fence,
                               prekey_gap)  # fmt: skip
        return await _restore(db, restoring, make_schema)
    if meta is not None and local.last_seq > meta.applied_seq:
        # Never restore an older copy over it: the mirror brings the copy up to it.
        reason = "working store is ahead of the PostgreSQL copy; kept, the mirror catches up"
        log.info("store_freshness", extra=_freshness(company_id, local, meta, "keep", reason))
    if meta is None and not local.usable:
        await asyncio.to_thread(_create, state_dir, path, make_schema)
        return Provisioned(path, "created", "new company")
    await _prepare_existing(company_id, state_dir, path, make_schema)
    return Provisioned(path, "kept", "local store matches the PostgreSQL copy")


def _restore_reason(local: LocalState, meta: pg_copy.CopyMeta | None) -> str | None:
    if not local.usable:
        return f"working store {local.problem}"
    if meta is None:
        return None
    if local.store_uuid is not None and local.store_uuid != meta.store_uuid:
        return "working store is not the one PostgreSQL holds (different store identity)"
    if local.store_uuid is None:
        return "working store has no wapool identity"
    if local.last_seq < meta.applied_seq:
        return (
            f"working store is behind the PostgreSQL copy ({local.last_seq} < {meta.applied_seq})"
        )
    return None


def _freshness(
    company_id: str, local: LocalState, meta: pg_copy.CopyMeta | None, action: str, reason: str
) -> dict[str, object]:
    """The sequences behind a keep-or-restore decision, for the log."""
    return {
        "company": company_id, "action": action, "reason": reason,
        "local_seq": local.last_seq, "postgres_seq": None if meta is None else meta.applied_seq,
        "local_store": local.store_uuid, "postgres_store": None if meta is None else meta.store_uuid,
    }  # fmt: skip


@dataclass(frozen=True)
class _Restoring:
    state_dir: Path
    path: Path
    company_id: str
    meta: pg_copy.CopyMeta | None
    local: LocalState
    reason: str
    fence: Fence | None
    prekey_gap: int | None


async def _restore(db: Database, r: _Restoring, make_schema: SchemaMaker) -> Provisioned:
    state_dir, path, company_id, meta, local, reason, fence = (
        r.state_dir, r.path, r.company_id, r.meta, r.local, r.reason, r.fence,
    )  # fmt: skip
    keep_as = restore.replaced_name(path)
    report = None
    if local.fault is not Fault.MISSING:
        salvage = await read(path, meta)
        if meta is None and not (salvage.entries and salvage.schema):
            _refuse(company_id, local)
        report = await rescue(db, company_id, salvage, meta, keep_as, reason, fence)
        if report is not None:
            meta = await pg_copy.fetch_meta(db, company_id)  # saved: the copy moved on
    if meta is None:
        _refuse(company_id, local)
    rows = await pg_copy.fetch_rows(db, company_id, timeout=db.query_timeout + 30)
    mark = highest_prekey((t, k) for t, k, _ in rows)
    meta = await fork(db, meta, fence)
    await asyncio.to_thread(
        functools.partial(restore.build_from_rows, path, meta, rows, keep_as,
                          prekey_mark=mark, prekey_gap=r.prekey_gap)
    )  # fmt: skip
    alerts.store_restored(company_id, "postgres", reason)
    await _prepare_existing(company_id, state_dir, path, make_schema)
    return Provisioned(path, "restored-postgres", reason, report)


def _refuse(company_id: str, local: LocalState) -> NoReturn:
    alerts.restore_failed(company_id, f"working store {local.problem}; no PostgreSQL copy")
    raise StoreUnavailable(
        f"working store of {company_id} is {local.problem} and PostgreSQL holds no copy: "
        "restore it with `wapool import` or pair the company again"
    )


async def _from_snapshot(
    path: Path,
    company_id: str,
    snapshots: FallbackCache[str, Snapshot] | None,
    local: LocalState,
    error: str,
    prekey_gap: int,
) -> Provisioned:
    recalled = snapshots.recall(company_id) if snapshots else None
    if recalled is None:
        message = (
            f"working store of {company_id} is {local.problem}, PostgreSQL is unavailable "
            f"({error}) and no cached snapshot is younger than the cache TTL; will retry"
        )
        alerts.restore_failed(company_id, message)
        raise StoreUnavailable(message)
    if local.fault is not Fault.MISSING:
        salvage = await asyncio.to_thread(read_salvage, path, recalled.value.applied_seq)
        if salvage.owed:
            raise StoreUnavailable(
                f"working store of {company_id} is {local.problem} and holds changes the cached "
                f"snapshot may lack ({len(salvage.entries)} readable change-log entries"
                f"{'' if salvage.complete else ', and some unreadable'}); PostgreSQL is "
                f"unavailable ({error}): waiting for it, to save them before replacing the store"
            )
    await asyncio.to_thread(restore.build_from_snapshot, path, recalled.value, None, prekey_gap)
    alerts.store_restored(company_id, "cache", f"working store {local.problem}")
    log.warning(
        "restored_from_cache",
        extra={"company": company_id, "age_seconds": round(recalled.age_seconds, 1)},
    )
    return Provisioned(path, "restored-cache", f"snapshot {recalled.age_seconds:.0f} s old")


def _create(state_dir: Path, path: Path, make_schema: SchemaMaker) -> None:
    template.new_store(path, template.template_for(state_dir, make_schema))


async def _prepare_existing(
    company_id: str, state_dir: Path, path: Path, make_schema: SchemaMaker
) -> None:
    current = await asyncio.to_thread(template.template_for, state_dir, make_schema)
    try:
        await asyncio.to_thread(_upgrade, path, make_schema, current)
    except (sqlite3.Error, OSError, StoreFault) as exc:
        # Proven damage shows in the next inspection, which restores; anything else is retried.
        raise StoreUnreadable(company_id, as_fault(exc, path)) from None


def _upgrade(path: Path, make_schema: SchemaMaker, current: template.Template) -> None:
    """Let neonize upgrade the schema with our triggers out of the way, then reinstall them;
    a store already at the template's schema needs no upgrade (neonize would change nothing)."""
    with connection(path) as conn:
        if current.current(conn):
            install_capture(conn)
            return
        drop_capture(conn)
        make_schema([path])
        install_capture(conn)
