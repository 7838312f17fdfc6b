"""``wapool import`` holds the company's lease, as a daemon would, for as long as it works.

An import replaces the PostgreSQL copy and this host's working store. Done under a live client,
the client would go on writing the old file, the mirror would be refused forever (new store
identity), those writes would be lost at the next restart, and ``verify`` could still say
EQUAL. So the import refuses while anyone holds a live lease on the company (naming the
holder: ``wapool company disable`` makes that daemon stop the client, drain and release the
lease), and otherwise takes the lease itself: no daemon can start the company until the import
has finished and released it. Taking an expired lease raises its epoch, which fences a daemon
that lost its lease without noticing (its mirror is refused, see ``leases.Fence``).

The lease is renewed every third of ``WAPOOL_LEASE_SECONDS`` while the import runs; an import
that dies leaves it to expire like a dead daemon's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable, WapoolError
from wapool.leases import Fence, Leases


class CompanyDriven(WapoolError):
    """Another process holds the company's lease: importing now would swap a live store."""


def import_holder() -> str:
    """The name the import's lease carries (shown to a daemon or import that finds it taken)."""
    return f"wapool import on {socket.gethostname()} (pid {os.getpid()})"


@contextlib.asynccontextmanager
async def held_for_import(
    db: Database, company_id: str, seconds: float, holder: str | None = None
) -> AsyncIterator[Fence]:
    """Hold ``company_id``'s lease for the duration; the fence the import writes under."""
    leases = Leases(db, holder or import_holder(), seconds)
    if not await leases.acquire([company_id]):
        raise CompanyDriven(await _refusal(db, company_id))
    renewing = asyncio.create_task(_renew(leases, seconds), name="import-lease")
    try:
        yield leases.fence()
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        with contextlib.suppress(DatabaseUnavailable):  # else it expires on its own
            await leases.release()


async def _renew(leases: Leases, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds / 3)
        with contextlib.suppress(DatabaseUnavailable):
            await leases.renew()


async def _refusal(db: Database, company_id: str) -> str:
    rows = await db.fetch(
        "SELECT holder, to_char(expires_at AT TIME ZONE 'UTC', 'HH24:MI:SS') "
        "FROM company_leases WHERE company_id = %s",
        (company_id,),
    )
    holder = f"{rows[0][0]} (lease until {rows[0][1]} UTC)" if rows else "another process"
    return (
        f"company {company_id!r} is driven by {holder}: importing under a live client would "
        f"lose its writes; run `wapool company disable {company_id}`, wait for `wapool status` "
        f"to show it stopped, import, then `wapool company enable {company_id}`"
    )
