"""The ``nodes`` table: every daemon registers, beats its heart and reads who else is alive.

A node is *live* while its heartbeat is younger than a lease length (it beats every third of
one, like lease renewals): by the time a dead node's leases expire, the others already count
without it and their fair share includes its companies. A *draining* node (``wapool drain``)
is live but takes no share: it hands everything over. A daemon that starts clears its own
draining flag (a restart after a drain takes its share again); a clean stop removes its row.
Registration and ``wapool drain`` wake the other daemons (``NOTIFY wapool_nodes``).

The operator side (``wapool nodes``, ``drain``, ``move``) reads and writes the same rows.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from wapool import __version__
from wapool.db.pool import Conn, Database
from wapool.errors import WapoolError


@dataclass(frozen=True)
class ClusterView:
    """What one daemon needs to find its fair share, read in one transaction."""

    #: Live nodes that take a share (not draining), this one included when it is live.
    sharing: frozenset[str]
    #: This node was asked to hand everything over.
    draining: bool = False
    #: Company -> node its holder is asked to hand it to (``wapool move``), for our leases.
    moves: dict[str, str] = field(default_factory=dict)
    #: Leases handed over less than a lease ago and not taken yet (anyone's).
    in_transit: int = 0
    #: Sharing node -> companies whose unexpired lease it holds.
    holding: dict[str, int] = field(default_factory=dict)
    #: Seconds until the first other live node is no longer live unless it beats (None: none).
    stale_in: float | None = None


@dataclass(frozen=True)
class NodeRow:
    name: str
    address: str
    version: str
    companies: int
    heartbeat_age: float
    draining: bool
    live: bool


class Nodes:
    def __init__(self, db: Database, name: str, lease_seconds: float, address: str = "") -> None:
        self._db = db
        self.name = name
        self.lease_seconds = lease_seconds
        self.address = address or socket.gethostname()

    async def register(self) -> None:
        await self._db.run(self._register)

    async def _register(self, conn: Conn) -> None:
        await conn.execute(
            "INSERT INTO nodes (name, address, version) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address, version = "
            "EXCLUDED.version, started_at = now(), heartbeat_at = now(), draining = false",
            (self.name, self.address, __version__),
        )
        await conn.execute("SELECT pg_notify('wapool_nodes', %s)", (self.name,))

    async def beat(self, companies: int) -> None:
        """Heartbeat; re-registers if the row is gone (removed by hand, or a stop raced)."""
        count = await self._db.execute(
            "UPDATE nodes SET heartbeat_at = now(), companies = %s WHERE name = %s",
            (companies, self.name),
        )
        if count == 0:
            await self.register()

    async def deregister(self) -> None:
        await self._db.execute("DELETE FROM nodes WHERE name = %s", (self.name,))

    async def view(self) -> ClusterView:
        async def work(conn: Conn) -> ClusterView:
            cur = await conn.execute(
                "SELECT name, draining, extract(epoch FROM now() - heartbeat_at)::float8 "
                "FROM nodes WHERE heartbeat_at > now() - make_interval(secs => %s)",
                (self.lease_seconds,),
            )
            rows = await cur.fetchall()
            live = {str(n): bool(d) for n, d, _ in rows}
            ages = [float(a) for n, _, a in rows if n != self.name]
            cur = await conn.execute(
                "SELECT company_id, move_to FROM company_leases "
                "WHERE holder = %s AND move_to IS NOT NULL",
                (self.name,),
            )
            moves = {str(c): str(t) for c, t in await cur.fetchall()}
            cur = await conn.execute(
                "SELECT count(*) FROM company_leases WHERE holder = '' "
                "AND expires_at > now() - make_interval(secs => %s)",
                (self.lease_seconds,),
            )
            row = await cur.fetchone()
            cur = await conn.execute(
                "SELECT holder, count(*) FROM company_leases WHERE expires_at > now() "
                "AND holder = ANY(%s) GROUP BY holder",
                (sorted(live),),
            )
            holding = {str(h): int(c) for h, c in await cur.fetchall()}
            sharing = frozenset(n for n, d in live.items() if not d)
            return ClusterView(
                sharing=sharing,
                draining=live.get(self.name, False),
                moves=moves,
                in_transit=int(row[0]) if row else 0,
                holding={n: holding.get(n, 0) for n in sharing},
                stale_in=self.lease_seconds - max(ages) if ages else None,
            )

        return await self._db.run(work)


async def list_nodes(db: Database, lease_seconds: float) -> list[NodeRow]:
    """Every registered node with the companies it drives now (its unexpired leases)."""
    rows = await db.fetch(
        "SELECT n.name, n.address, n.version, n.draining, "
        "extract(epoch FROM now() - n.heartbeat_at)::float8, "
        "(SELECT count(*) FROM company_leases l WHERE l.holder = n.name AND l.expires_at > now()) "
        "FROM nodes n ORDER BY n.name"
    )
    return [
        NodeRow(str(n), str(a), str(v), int(c), float(age), bool(d), float(age) < lease_seconds)
        for n, a, v, d, age, c in rows
    ]


async def set_draining(db: Database, node: str, draining: bool) -> None:
    async def work(conn: Conn) -> None:
        cur = await conn.execute(
            "UPDATE nodes SET draining = %s WHERE name = %s RETURNING name", (draining, node)
        )
        if await cur.fetchone() is None:
            raise WapoolError(f"no node named {node!r} (see `wapool nodes`)")
        await conn.execute("SELECT pg_notify('wapool_nodes', %s)", (node,))

    await db.run(work)


async def request_move(db: Database, company: str, node: str, lease_seconds: float) -> str:
    """Ask the company's holder to hand it to ``node``; returns what was done, in words."""

    async def work(conn: Conn) -> str:
        cur = await conn.execute(
            "SELECT draining, heartbeat_at > now() - make_interval(secs => %s) "
            "FROM nodes WHERE name = %s",
            (lease_seconds, node),
        )
        target = await cur.fetchone()
        if target is None:
            raise WapoolError(f"no node named {node!r} (see `wapool nodes`)")
        if target[0] or not target[1]:
            state = "draining" if target[0] else "not live (no recent heartbeat)"
            raise WapoolError(f"node {node!r} is {state}: it cannot take {company!r}")
        cur = await conn.execute(
            "SELECT holder FROM company_leases WHERE company_id = %s AND expires_at > now() "
            "FOR UPDATE",
            (company,),
        )
        row = await cur.fetchone()
        if row is not None and row[0] == node:
            return f"{company} is already driven by {node}"
        if row is None:  # nobody drives it: reserve it for the node straight away
            await conn.execute(
                "INSERT INTO company_leases (company_id, holder, epoch, expires_at, "
                "reserved_for) VALUES (%s, '', 0, now(), %s) ON CONFLICT (company_id) DO "
                "UPDATE SET reserved_for = EXCLUDED.reserved_for, holder = '', expires_at = "
                "LEAST(company_leases.expires_at, now())",
                (company, node),
            )
            await conn.execute("SELECT pg_notify('wapool_leases', %s)", (company,))
            return f"{company} is driven by no node: reserved for {node}"
        await conn.execute(
            "UPDATE company_leases SET move_to = %s WHERE company_id = %s", (node, company)
        )
        await conn.execute("SELECT pg_notify('wapool_nodes', %s)", (company,))
        return f"{company}: asked {row[0]} to hand it over to {node}"

    return await db.run(work)
