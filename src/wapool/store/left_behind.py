"""Stores a daemon that died left behind, for companies another daemon has driven since.

A daemon killed (SIGKILL, a power cut) keeps its working stores on disk; its leases expire and
the other daemons take its companies over, each restored from PostgreSQL. What such a store had
not mirrored yet was written under a lease that is gone: it must never be applied over the new
holder's copy, and it must not sit in the state directory unreported either (``verify`` would
call the store DIFFERENT, and nobody would be told; invariant 7).

So a daemon that starts with PostgreSQL reachable looks, before it takes any lease, at the
stores of the leases it held when it last ran (``leases.json``). A company whose lease another
daemon holds now, or whose PostgreSQL copy is another store's (another daemon restored it,
``store.fork``), is left behind: a store that owed changes is kept aside with a report naming
them (``aside``, as when a running daemon learns it lost a lease); one that owed nothing is
removed (everything in it is in PostgreSQL, and key material should not linger). A lease still
ours, or a store still the copy's whose lease nobody holds, is left alone, and watched (``look``
again after each batch of leases taken): provisioning resumes it as it is if this daemon takes
the lease back, and it is left behind if another daemon takes it first (its fair share may not
give this daemon all its old companies back; nothing else would ever look at that store).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from wapool.db.pool import Conn, Database
from wapool.leases import current_holders
from wapool.store import changelog
from wapool.store.aside import set_aside
from wapool.store.faults import SQLITE_ERRORS, StoreFault
from wapool.store.leftovers import remove_file_set
from wapool.store.rescue import Report
from wapool.store.working_store import get_meta, read_only, store_path

log = logging.getLogger(__name__)


#: Said of a store whose copy another daemon restored (``store.fork``): both lines continue from
#: the sequence the copy had then, which is not recorded, so entries the mirror had applied but
#: not yet trimmed (it trims busy stores once a second) cannot be told from those it had not.
FORKED = (
    "; PostgreSQL's copy was restored elsewhere since: entries applied before this daemon died "
    "but not yet trimmed may be among these"
)


@dataclass(frozen=True)
class LeftBehind:
    company_id: str
    reason: str
    #: What the copy is known to hold of this store's change log (its applied sequence when it
    #: is still this store's copy; 0 when it is another's).
    applied_seq: int = 0


async def find(
    db: Database, state_dir: Path, holder: str, held_before: Iterable[str]
) -> list[LeftBehind]:
    """The stores of ``held_before`` (leases this daemon held when it last ran) that another
    daemon has taken over since. Raises ``DatabaseUnavailable``."""
    present = [c for c in sorted(held_before) if await asyncio.to_thread(_exists, state_dir, c)]
    if not present:
        return []
    holders = await current_holders(db)
    copies = await _copies(db, present)
    found = []
    for company in present:
        now = holders.get(company, "")
        if now == holder:
            continue  # still ours: resumed as it is
        local = await asyncio.to_thread(_identity, store_path(state_dir, company))
        copy = copies.get(company)
        same = copy is not None and local == copy[0]
        if now:
            reason = f"lease taken over by {now} while this daemon was down"
        elif copy is not None and local is not None and not same:
            reason = "another daemon drove the company while this daemon was down"
        else:
            continue  # nobody took it over: provisioning resumes it, its backlog mirrored
        if same and copy is not None:
            found.append(LeftBehind(company, reason, copy[1]))
        else:
            found.append(LeftBehind(company, reason + FORKED))
    return found


def leave(state_dir: Path, left: LeftBehind) -> Report | None:
    """Keep the store aside if it owed changes (the report), else remove it (None)."""
    path = store_path(state_dir, left.company_id)
    with closing(read_only(path)) as conn:
        owed = changelog.first_seq_after(conn, left.applied_seq) is not None
    if owed:
        return set_aside(state_dir, left.company_id, left.reason, left.applied_seq)
    remove_file_set(path)
    log.info("store_discarded",
             extra={"company": left.company_id, "reason": left.reason, "owed": 0})  # fmt: skip
    return None


async def look(
    db: Database,
    state_dir: Path,
    holder: str,
    companies: Iterable[str],
    held: Container[str] = (),
) -> tuple[int, set[str]]:
    """``find`` among ``companies`` (those not ``held`` by this daemon now) then ``leave``
    each; a store that cannot be read is left to provisioning (which retries, restores or
    reports it). Returns how many were left behind, and the companies still to watch: a store
    whose lease nobody else holds yet. Raises ``DatabaseUnavailable``."""
    watched = [c for c in companies if c not in held]
    found = await find(db, state_dir, holder, watched)
    count = 0
    for left in found:
        try:
            await asyncio.to_thread(leave, state_dir, left)
            count += 1
        except (StoreFault, *SQLITE_ERRORS, OSError) as exc:
            log.warning("store_left_behind_unreadable",
                        extra={"company": left.company_id, "error": str(exc)})  # fmt: skip
    done = {left.company_id for left in found}
    waiting = {c for c in watched if c not in done}
    return count, {c for c in waiting if await asyncio.to_thread(_exists, state_dir, c)}


async def _copies(db: Database, companies: list[str]) -> dict[str, tuple[str, int]]:
    """Company -> (identity, applied sequence) of its PostgreSQL copy."""

    async def work(conn: Conn) -> dict[str, tuple[str, int]]:
        cur = await conn.execute(
            "SELECT company_id, store_uuid::text, applied_seq FROM store_copies "
            "WHERE company_id = ANY(%s)",
            (companies,),
        )
        return {str(c): (str(u), int(s)) for c, u, s in await cur.fetchall()}

    return await db.run(work)


def _exists(state_dir: Path, company_id: str) -> bool:
    try:
        return store_path(state_dir, company_id).exists()
    except OSError:
        return False


def _identity(path: Path) -> str | None:
    """The store's identity, or None when it has none or cannot be read now."""
    try:
        with closing(read_only(path)) as conn:
            return get_meta(conn, "store_uuid")
    except (StoreFault, *SQLITE_ERRORS, OSError):
        return None
