"""Make a company's working store ready before its client starts.

The decision, in order (PostgreSQL is the system of record):

* PostgreSQL has a copy, and the local store is missing, corrupt, belongs to another store
  identity, or is behind the copy  ->  restore from PostgreSQL;
* PostgreSQL has no copy and there is no local store  ->  create one through neonize;
* PostgreSQL is down and the local store is missing or corrupt  ->  restore from the cached
  snapshot if it is younger than the TTL, else ``StoreUnavailable`` (retry with backoff);
* otherwise the local store is used as it is (neonize upgrades its schema if needed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wapool.cache import FallbackCache
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable, WapoolError
from wapool.observability import alerts
from wapool.store import changelog, pg_copy, restore
from wapool.store.capture import drop_capture, install_capture
from wapool.store.snapshot import Snapshot
from wapool.store.working_store import (
    CorruptStore,
    connection,
    get_meta,
    prepare_dir,
    quick_check,
)
from wapool.whatsapp.neonize_store import create_schema

log = logging.getLogger(__name__)

SchemaMaker = Callable[[Sequence[Path]], object]


class StoreUnavailable(WapoolError):
    """No usable working store and nothing to restore it from right now."""


@dataclass(frozen=True)
class LocalState:
    usable: bool
    store_uuid: str | None
    last_seq: int
    problem: str | None


@dataclass(frozen=True)
class Provisioned:
    path: Path
    action: str  # "kept", "created", "restored-postgres", "restored-cache"
    reason: str


def inspect_local(path: Path) -> LocalState:
    if not path.exists():
        return LocalState(False, None, 0, "missing")
    try:
        quick_check(path)
        with connection(path) as conn:
            has_log = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'wapool_meta'"
            ).fetchone()
            if not has_log:
                return LocalState(True, None, 0, None)
            return LocalState(True, get_meta(conn, "store_uuid"), changelog.last_seq(conn), None)
    except (CorruptStore, Exception) as exc:
        return LocalState(False, None, 0, f"corrupt: {exc}")


async def provision(
    db: Database,
    state_dir: Path,
    company_id: str,
    snapshots: FallbackCache[str, Snapshot] | None = None,
    make_schema: SchemaMaker = create_schema,
) -> Provisioned:
    path = prepare_dir(state_dir, company_id)
    local = await asyncio.to_thread(inspect_local, path)
    try:
        meta = await pg_copy.fetch_meta(db, company_id)
    except DatabaseUnavailable as exc:
        if local.usable:
            await asyncio.to_thread(_prepare_existing, path, make_schema)
            return Provisioned(path, "kept", "PostgreSQL unavailable; local store is sound")
        return await _from_snapshot(path, company_id, snapshots, local, str(exc))

    reason = _restore_reason(local, meta)
    if meta is not None and reason is not None:
        rows = await pg_copy.fetch_rows(db, company_id, timeout=db.query_timeout + 30)
        await asyncio.to_thread(restore.build_from_rows, path, meta, rows)
        alerts.store_restored(company_id, "postgres", reason)
        await asyncio.to_thread(_prepare_existing, path, make_schema)
        return Provisioned(path, "restored-postgres", reason)
    if meta is None and not local.usable:
        if local.problem != "missing":
            alerts.restore_failed(company_id, f"working store {local.problem}; no PostgreSQL copy")
            raise StoreUnavailable(
                f"working store of {company_id} is {local.problem} and PostgreSQL holds no copy: "
                "restore it with `wapool import` or pair the company again"
            )
        await asyncio.to_thread(_create, path, make_schema)
        return Provisioned(path, "created", "new company")
    await asyncio.to_thread(_prepare_existing, path, make_schema)
    return Provisioned(path, "kept", "local store matches the PostgreSQL copy")


def _restore_reason(local: LocalState, meta: pg_copy.CopyMeta | None) -> str | None:
    if meta is None:
        return None
    if not local.usable:
        return f"working store {local.problem}"
    if local.store_uuid is not None and local.store_uuid != meta.store_uuid:
        return "working store is not the one PostgreSQL holds (different store identity)"
    if local.store_uuid is None:
        return "working store has no wapool identity"
    if local.last_seq < meta.applied_seq:
        return (
            f"working store is behind the PostgreSQL copy ({local.last_seq} < {meta.applied_seq})"
        )
    return None


async def _from_snapshot(
    path: Path,
    company_id: str,
    snapshots: FallbackCache[str, Snapshot] | None,
    local: LocalState,
    error: str,
) -> Provisioned:
    recalled = snapshots.recall(company_id) if snapshots else None
    if recalled is None:
        message = (
            f"working store of {company_id} is {local.problem}, PostgreSQL is unavailable "
            f"({error}) and no cached snapshot is younger than the cache TTL; will retry"
        )
        alerts.restore_failed(company_id, message)
        raise StoreUnavailable(message)
    await asyncio.to_thread(restore.build_from_snapshot, path, recalled.value)
    alerts.store_restored(company_id, "cache", f"working store {local.problem}")
    log.warning(
        "restored_from_cache",
        extra={"company": company_id, "age_seconds": round(recalled.age_seconds, 1)},
    )
    return Provisioned(path, "restored-cache", f"snapshot {recalled.age_seconds:.0f} s old")


def _create(path: Path, make_schema: SchemaMaker) -> None:
    make_schema([path])
    with connection(path) as conn:
        install_capture(conn)


def _prepare_existing(path: Path, make_schema: SchemaMaker) -> None:
    """Let neonize upgrade the schema with our triggers out of the way, then reinstall them."""
    with connection(path) as conn:
        drop_capture(conn)
        make_schema([path])
        install_capture(conn)
