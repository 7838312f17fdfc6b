"""Single writer across processes and hosts: a lease per company, with a fencing epoch.

A daemon drives a company only while it holds the company's lease in PostgreSQL. Leases are
renewed every third of their duration; one that expired (its holder died or lost PostgreSQL for
longer than the lease) can be taken over, which raises the epoch. The mirror applies changes
only under the epoch it holds, so a stale holder's writes are rejected.

A PostgreSQL outage alone never stops a running client (the lease simply cannot be renewed or
taken by anyone who cannot reach PostgreSQL either). If another daemon took over meanwhile,
WhatsApp itself replaces the older connection, and the old holder stops the company as soon as
it learns it lost the lease.

Everything about the ``company_leases`` table lives here: this daemon's own leases (``Leases``),
the fence the mirror writes under (``Fence``) and who drives what (``current_holders``, which the
cleanup asks before it prunes a company).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from wapool.db.pool import Conn, Database

log = logging.getLogger(__name__)


class Leases:
    def __init__(self, db: Database, holder: str, seconds: float) -> None:
        self._db = db
        self.holder = holder
        self.seconds = seconds
        self._held: dict[str, int] = {}

    @property
    def held(self) -> Mapping[str, int]:
        """Company -> epoch of the leases this daemon holds (read-only, always current)."""
        return MappingProxyType(self._held)

    def fence(self) -> Fence:
        """The mirror's fence: it follows these leases as they are taken, renewed and lost."""
        return Fence(self.holder, self.held)

    async def acquire(self, companies: Iterable[str]) -> dict[str, int]:
        """Take every free or expired lease among ``companies``; return the ones newly held."""
        wanted = sorted(set(companies) - self._held.keys())
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
        self._held.update(taken)
        for company, epoch in taken.items():
            log.info("lease_acquired", extra={"company": company, "epoch": epoch})
        return taken

    async def renew(self) -> list[str]:
        """Extend every held lease; return the companies whose lease was lost to another holder."""
        if not self._held:
            return []
        companies = sorted(self._held)

        async def work(conn: Conn) -> set[str]:
            cur = await conn.execute(
                "UPDATE company_leases SET expires_at = now() + make_interval(secs => %s) "
                "WHERE holder = %s AND company_id = ANY(%s) RETURNING company_id, epoch",
                (self.seconds, self.holder, companies),
            )
            return {str(c) for c, e in await cur.fetchall() if self._held.get(str(c)) == int(e)}

        kept = await self._db.run(work)
        lost = [c for c in companies if c not in kept]
        for company in lost:
            self._held.pop(company, None)
            log.error("lease_lost", extra={"company": company})
        return lost

    async def release(self, companies: Iterable[str] | None = None) -> None:
        names = sorted(self._held if companies is None else set(companies) & self._held.keys())
        if not names:
            return

        async def work(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM company_leases WHERE holder = %s AND company_id = ANY(%s)",
                (self.holder, names),
            )

        await self._db.run(work)
        for company in names:
            self._held.pop(company, None)


@dataclass(frozen=True)
class Fence:
    """Who may write a company's PostgreSQL copy: this holder, under these epochs."""

    holder: str
    epochs: Mapping[str, int]

    async def refused(self, conn: Conn, companies: list[str]) -> dict[str, str]:
        """Companies this holder may not write now (lease lost, taken over, never held), and why.

        Locks the lease rows (``FOR SHARE``) until the caller's transaction ends."""
        cur = await conn.execute(
            "SELECT company_id, holder, epoch FROM company_leases WHERE company_id = ANY(%s) "
            "ORDER BY company_id FOR SHARE",
            (companies,),
        )
        leases = {str(c): (str(h), int(e)) for c, h, e in await cur.fetchall()}
        refused: dict[str, str] = {}
        for company in companies:
            mine = (self.holder, self.epochs.get(company))
            if leases.get(company) != mine:
                current = leases.get(company)
                refused[company] = (
                    f"stale writer: lease epoch {mine[1]} is not the current one "
                    f"({'none' if current is None else current[1]})"
                )
        return refused


async def current_holders(db: Database) -> dict[str, str]:
    """Company -> the daemon driving it right now (an unexpired single-writer lease)."""
    rows = await db.fetch("SELECT company_id, holder FROM company_leases WHERE expires_at > now()")
    return {str(c): str(h) for c, h in rows}
