"""Single writer across processes and hosts: a lease per company, with a fencing epoch.

A daemon drives a company only while it holds the company's lease in PostgreSQL. Leases are
renewed every third of their duration; one that expired (its holder died or lost PostgreSQL for
longer than the lease) can be taken over, which raises the epoch. The mirror applies changes
only under the epoch it holds, so a stale holder's writes are rejected.

A PostgreSQL outage alone never stops a running client (the lease simply cannot be renewed or
taken by anyone who cannot reach PostgreSQL either). If another daemon took over meanwhile,
WhatsApp itself replaces the older connection, and the old holder stops the company as soon as
it learns it lost the lease.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from pathlib import Path

from wapool.db.pool import Conn, Database

log = logging.getLogger(__name__)


def default_holder(state_dir: Path) -> str:
    """This host and state directory: a daemon restarted here resumes its own leases at once.

    Two daemons never share a state directory (``wapool run`` locks it), so the name is unique.
    """
    return f"{socket.gethostname()}:{state_dir}"


class Leases:
    def __init__(self, db: Database, holder: str, seconds: float) -> None:
        self._db = db
        self.holder = holder
        self.seconds = seconds
        #: company -> epoch of the leases this daemon holds.
        self.held: dict[str, int] = {}

    async def acquire(self, companies: Iterable[str]) -> dict[str, int]:
        """Take every free or expired lease among ``companies``; return the ones newly held."""
        wanted = sorted(set(companies) - self.held.keys())
        if not wanted:
            return {}

        async def work(conn: Conn) -> dict[str, int]:
            cur = await conn.execute(
                "INSERT INTO company_leases (company_id, holder, epoch, expires_at) "
                "SELECT c, %(holder)s, 1, now() + make_interval(secs => %(secs)s) "
                "FROM unnest(%(companies)s::text[]) AS c "
                "ON CONFLICT (company_id) DO UPDATE SET holder = EXCLUDED.holder, "
                "epoch = company_leases.epoch + 1, expires_at = EXCLUDED.expires_at "
                "WHERE company_leases.expires_at < now() OR company_leases.holder = EXCLUDED.holder "
                "RETURNING company_id, epoch",
                {"holder": self.holder, "secs": self.seconds, "companies": wanted},
            )
            return {str(c): int(e) for c, e in await cur.fetchall()}

        taken = await self._db.run(work)
        self.held.update(taken)
        for company, epoch in taken.items():
            log.info("lease_acquired", extra={"company": company, "epoch": epoch})
        return taken

    async def renew(self) -> list[str]:
        """Extend every held lease; return the companies whose lease was lost to another holder."""
        if not self.held:
            return []
        companies = sorted(self.held)

        async def work(conn: Conn) -> set[str]:
            cur = await conn.execute(
                "UPDATE company_leases SET expires_at = now() + make_interval(secs => %s) "
                "WHERE holder = %s AND company_id = ANY(%s) RETURNING company_id, epoch",
                (self.seconds, self.holder, companies),
            )
            return {str(c) for c, e in await cur.fetchall() if self.held.get(str(c)) == int(e)}

        kept = await self._db.run(work)
        lost = [c for c in companies if c not in kept]
        for company in lost:
            self.held.pop(company, None)
            log.error("lease_lost", extra={"company": company})
        return lost

    async def release(self, companies: Iterable[str] | None = None) -> None:
        names = sorted(self.held if companies is None else set(companies) & self.held.keys())
        if not names:
            return

        async def work(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM company_leases WHERE holder = %s AND company_id = ANY(%s)",
                (self.holder, names),
            )

        await self._db.run(work)
        for company in names:
            self.held.pop(company, None)
