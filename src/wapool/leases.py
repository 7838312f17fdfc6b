"""Single writer across processes and hosts: a lease per company, with a fencing epoch.

A daemon drives a company only while it holds the company's lease in PostgreSQL. Leases are
renewed every third of their duration, from the moment they are taken and independently of
anything slow (provisioning, reconcile); one that expired (its holder died or lost PostgreSQL for
longer than the lease) can be taken over, which raises the epoch. The mirror applies changes
only under the epoch it holds, so a stale holder's writes are rejected.

A client starts only if its lease is ``live`` right then. Each lease carries a local monotonic
"valid until": the moment its acquire or renew request was *sent*, plus the lease duration.
PostgreSQL computed the real end (``now()`` + duration) after that moment, so ours is never
later; until it passes nobody can take the lease over, so the epoch we hold is still the
current one, without a query. ``live`` asks for more than the next renewal plus a margin
(together half a lease) to be left, so a client never starts on a lease about to lapse.

A PostgreSQL outage alone never stops a running client (the lease simply cannot be renewed or
taken by anyone who cannot reach PostgreSQL either). If another daemon took over meanwhile,
WhatsApp itself replaces the older connection, and the old holder stops the company as soon as
it learns it lost the lease.

Leases held before a restart can be *adopted* from the state directory while PostgreSQL is
unreachable (``adopt``, issue 13): they count as held but stay *unconfirmed*, as do leases whose
renewal failed past their end, until a renewal reaches PostgreSQL: the same epoch is renewed,
a lease taken over is lost. The mirror writes nothing for an unconfirmed lease.

A graceful handoff (``hand_over``) leaves the row expired with no holder, recording the
PostgreSQL copy's applied sequence then (``released_seq``: the taker restores at or beyond it)
and, for a ``wapool move``, the node it is reserved for during one lease length; the release
wakes the other daemons (``NOTIFY wapool_leases``).

Everything about the ``company_leases`` table lives here (hence one module over 250 lines):
this daemon's own leases (``Leases``), the fence the mirror writes under (``Fence``) and who
drives what (``current_holders``, which the cleanup asks before it prunes a company).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

import psycopg

from wapool.clock import Clock, SystemClock
from wapool.db.pool import Conn, Database
from wapool.errors import DatabaseUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Leases:
    def __init__(
        self,
        db: Database,
        holder: str,
        seconds: float,
        clock: Clock | None = None,
        *,
        takeover_grace: float = 0.0,
    ) -> None:
        self._db = db
        self.holder = holder
        self.seconds = seconds
        self._clock = clock or SystemClock()
        #: How long a lease another holder let expire must be seen expired, with PostgreSQL
        #: reachable all along, before it is taken over (see ``_ripe``).
        self.takeover_grace = takeover_grace
        #: Company -> (holder, epoch, first seen expired, outages counted then).
        self._expired: dict[str, tuple[str, int, float, int]] = {}
        #: Expired leases of other holders seen, not yet taken over.
        self.ripening = 0
        self._held: dict[str, int] = {}
        self._valid_until: dict[str, float] = {}
        self._unconfirmed: set[str] = set()
        self._adopted: set[str] = set()
        #: Seconds until the first of the wanted leases another daemon holds expires, as seen
        #: by the last ``acquire`` (None: none held): when to look again for a dead holder's.
        self.next_expiry: float | None = None
        #: Company -> the applied sequence its previous holder handed it over at (taken ones).
        self.handed_at: dict[str, int] = {}
        self.renewals = 0
        self.losses = 0

    @property
    def held(self) -> Mapping[str, int]:
        """Company -> epoch of the leases this daemon holds (read-only, always current)."""
        return MappingProxyType(self._held)

    @property
    def renew_every(self) -> float:
        return self.seconds / 3

    @property
    def margin(self) -> float:
        """Slack for a late renewal (a busy loop, a slow query) before new starts pause."""
        return self.seconds / 6

    def live(self, company: str) -> bool:
        """Held under our epoch, and sure to stay so past the next renewal plus the margin.

        No query: our epoch cannot have been replaced before the lease's end, and ``valid_until``
        is never later than that end (see the module docstring)."""
        until = self._valid_until.get(company)
        if company not in self._held or until is None:
            return False
        return until - self._clock.monotonic() > self.renew_every + self.margin

    def fence(self) -> Fence:
        """The mirror's fence: it follows these leases as they are taken, renewed and lost."""
        return Fence(self.holder, self.held, self._unconfirmed)

    @property
    def unconfirmed(self) -> Set[str]:
        """Held leases PostgreSQL has not confirmed since they were adopted or outlived."""
        return frozenset(self._unconfirmed)

    def adopt(self, epochs: Mapping[str, int]) -> None:
        """Hold the leases this daemon held before a restart (read from the state directory
        while PostgreSQL is unreachable): its clients may start (``resumable``) but nothing is
        mirrored for them until a renewal confirms the epoch."""
        for company, epoch in epochs.items():
            self._held[company] = epoch
            self._unconfirmed.add(company)
            self._adopted.add(company)
            log.info("lease_adopted", extra={"company": company, "epoch": epoch})

    def resumable(self, company: str) -> bool:
        """Adopted from the state directory and not yet re-validated."""
        return company in self._adopted and company in self._held

    async def acquire(
        self, companies: Iterable[str], limit: int | None = None, *, reserved_only: bool = False
    ) -> dict[str, int]:
        """Take free or expired leases among ``companies`` (at most ``limit``; those handed to
        this daemon first, then in company order); return the ones newly held. A lease handed
        to another node is left to it for one lease length. ``reserved_only``: only leases
        handed to this daemon."""
        wanted = sorted(set(companies) - self._held.keys())
        if not wanted or limit == 0:
            return {}
        sent = self._clock.monotonic()
        params: dict[str, object] = {"holder": self.holder, "secs": self.seconds,
                  "companies": wanted, "limit": limit, "reserved_only": reserved_only}  # fmt: skip

        async def work(conn: Conn) -> dict[str, tuple[int, int | None]]:
            cur = await conn.execute(
                "SELECT company_id, holder, epoch, extract(epoch FROM now() - expires_at)::float8 "
                "FROM company_leases WHERE company_id = ANY(%s) AND holder NOT IN ('', %s)",
                (wanted, self.holder),
            )
            held = await cur.fetchall()
            rows = [row for row in held if row[3] > 0]
            ahead = [-float(x) for _, _, _, x in held if x <= 0]
            self.next_expiry = min(ahead) if ahead else None
            params["ripe"] = self._ripe(
                {str(c): (str(h), int(e)) for c, h, e, _ in rows},
                {str(c): float(x) for c, _, _, x in rows},
            )
            return await _take(conn, params)

        try:
            taken = await self._run(work)
        except DatabaseUnavailable:
            self._expired.clear()  # seen through an outage: the holder may not have had its chance
            raise
        for company, (epoch, seq) in taken.items():
            self._held[company] = epoch
            self._valid_until[company] = sent + self.seconds
            if seq is not None:
                self.handed_at[company] = seq
            log.info("lease_acquired", extra={"company": company, "epoch": epoch,
                                              "handed_at_seq": seq})  # fmt: skip
        return {company: epoch for company, (epoch, _) in taken.items()}

    def _ripe(
        self, expired: Mapping[str, tuple[str, int]], expired_for: Mapping[str, float]
    ) -> list[str]:
        """Which of these expired leases of other holders may be taken over now.

        A holder cut off from PostgreSQL by an outage cannot renew; when PostgreSQL returns, it
        renews within a third of a lease. Taking its lease before that would drive the company
        from a store without the holder's last changes (its mirror is fenced off from then on).
        So a lease is taken over once it was seen expired, under the same holder and epoch, for
        ``takeover_grace`` seconds during which this daemon saw no outage — or at once if this
        daemon has reached PostgreSQL without an outage since before the holder's last renewal
        (``expired_for`` seconds ago, by PostgreSQL's clock, plus a lease): the holder then had
        every renewal's chance with PostgreSQL up, and did not take it (it died, or is cut off
        alone, which no grace would mend)."""
        now = self._clock.monotonic()
        health = self._db.health.snapshot()
        outages = health.outages
        up_for = health.up_seconds
        seen = {}
        for company, (holder, epoch) in expired.items():
            before = self._expired.get(company)
            same = before is not None and before[:2] == (holder, epoch) and before[3] == outages
            seen[company] = before if same and before else (holder, epoch, now, outages)
        self._expired = seen
        ripe = [
            c for c, (_, _, first, _) in seen.items()
            if now - first >= self.takeover_grace
            or up_for >= expired_for.get(c, 0.0) + self.seconds + self.takeover_grace
        ]  # fmt: skip
        self.ripening = len(seen) - len(ripe)
        return ripe

    async def hand_over(self, companies: Mapping[str, str | None]) -> dict[str, int]:
        """Give these leases up for another daemon to take (company -> the node it is reserved
        for, or None for anyone), recording the copy's applied sequence; return company ->
        that sequence for the leases that were still ours. The caller stopped the clients and
        drained the mirror first."""
        names = sorted(set(companies) & self._held.keys())
        if not names:
            return {}
        for company in names:  # from now on no new client may start under these leases
            self._valid_until.pop(company, None)
        params: dict[str, object] = {"holder": self.holder, "companies": names,
                  "epochs": [self._held[c] for c in names],
                  "targets": [companies[c] for c in names]}  # fmt: skip
        released = await self._run(lambda conn: _hand_over(conn, params))
        for company in names:
            self._forget(company)
        for company, seq in released.items():
            log.info("lease_handed_over", extra={"company": company, "seq": seq,
                                                 "to": companies[company] or "any"})  # fmt: skip
        return released

    async def renew(self) -> list[str]:
        """Extend every held lease; return the companies whose lease was lost to another holder."""
        if not self._held:
            return []
        asked = dict(self._held)
        sent = self._clock.monotonic()

        async def work(conn: Conn) -> set[str]:
            cur = await conn.execute(
                "UPDATE company_leases SET expires_at = now() + make_interval(secs => %s) "
                "WHERE holder = %s AND company_id = ANY(%s) RETURNING company_id, epoch",
                (self.seconds, self.holder, sorted(asked)),
            )
            return {str(c) for c, e in await cur.fetchall() if asked.get(str(c)) == int(e)}

        try:
            kept = await self._db.run(work)  # a timeout on busy rows: the runtime retries it
        except (DatabaseUnavailable, psycopg.errors.QueryCanceled):
            now = self._clock.monotonic()  # past their end, they may have been taken over
            self._unconfirmed.update(c for c in asked if self._valid_until.get(c, now) <= now)
            raise
        self.renewals += 1
        lost = []
        for company, epoch in asked.items():
            if self._held.get(company) != epoch:
                continue  # released or taken again meanwhile: not this renewal's business
            self._unconfirmed.discard(company)
            self._adopted.discard(company)
            if company in kept:
                self._valid_until[company] = sent + self.seconds
            else:
                lost.append(company)
                self.losses += 1
                self._forget(company)
                log.error("lease_lost", extra={"company": company})
        return lost

    async def release(self, companies: Iterable[str] | None = None) -> None:
        names = sorted(self._held if companies is None else set(companies) & self._held.keys())
        if not names:
            return
        for company in names:  # from now on no new client may start under these leases
            self._valid_until.pop(company, None)

        async def work(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM company_leases WHERE holder = %s AND company_id = ANY(%s)",
                (self.holder, names),
            )

        await self._run(work)
        for company in names:
            self._forget(company)

    async def _run(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """A lease row locked by a peer's backend that died mid-transaction (a partition: PostgreSQL
        has not noticed yet) times the statement out: for leases that is PostgreSQL not
        answering, like any outage, never an error that stops the daemon."""
        try:
            return await self._db.run(work)
        except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
            raise DatabaseUnavailable(f"lease rows busy: {type(exc).__name__}") from None

    def _forget(self, company: str) -> None:
        self._held.pop(company, None)
        self._valid_until.pop(company, None)
        self._unconfirmed.discard(company)
        self._adopted.discard(company)
        self.handed_at.pop(company, None)


async def _take(conn: Conn, params: dict[str, object]) -> dict[str, tuple[int, int | None]]:
    # Only rows that are free, expired or ours are candidates, so a limit is not spent on
    # leases another daemon holds; the conflict clause re-checks under the row lock. The
    # handoff's sequence is returned only when the previous holder handed the lease over.
    # A lease handed to another node (reserved_for) stays its own for one lease length.
    cur = await conn.execute(
        "INSERT INTO company_leases (company_id, holder, epoch, expires_at) "
        "SELECT c, %(holder)s, 1, now() + make_interval(secs => %(secs)s) "
        "FROM unnest(%(companies)s::text[]) AS w(c) "
        "LEFT JOIN company_leases l ON l.company_id = c "
        "WHERE (l.company_id IS NULL OR l.holder = %(holder)s OR (l.expires_at < now() "
        "AND (l.holder = '' OR c = ANY(%(ripe)s)))) "
        "AND (l.reserved_for IS NULL OR l.reserved_for = %(holder)s "
        "OR l.expires_at < now() - make_interval(secs => %(secs)s)) "
        "AND (NOT %(reserved_only)s OR l.reserved_for = %(holder)s) "
        "ORDER BY l.reserved_for IS NOT DISTINCT FROM %(holder)s DESC, c LIMIT %(limit)s "
        "ON CONFLICT (company_id) DO UPDATE SET holder = EXCLUDED.holder, "
        "epoch = company_leases.epoch + 1, expires_at = EXCLUDED.expires_at, "
        "reserved_for = NULL, move_to = NULL, released_seq = CASE WHEN "
        "company_leases.holder = '' THEN company_leases.released_seq END "
        "WHERE (company_leases.holder = EXCLUDED.holder OR (company_leases.expires_at < now() "
        "AND (company_leases.holder = '' OR company_leases.company_id = ANY(%(ripe)s)))) "
        "AND (company_leases.reserved_for IS NULL OR company_leases.reserved_for = "
        "EXCLUDED.holder OR company_leases.expires_at < now() - make_interval(secs => %(secs)s)) "
        "RETURNING company_id, epoch, released_seq",
        params,
    )
    return {str(c): (int(e), None if s is None else int(s)) for c, e, s in await cur.fetchall()}


async def _hand_over(conn: Conn, params: dict[str, object]) -> dict[str, int]:
    cur = await conn.execute(
        "UPDATE company_leases l SET holder = '', expires_at = now(), move_to = NULL, "
        "reserved_for = h.target, released_seq = COALESCE((SELECT applied_seq FROM store_copies "
        "s WHERE s.company_id = l.company_id), 0) "
        "FROM unnest(%(companies)s::text[], %(epochs)s::bigint[], %(targets)s::text[]) "
        "AS h(company, epoch, target) "
        "WHERE l.company_id = h.company AND l.epoch = h.epoch AND l.holder = %(holder)s "
        "RETURNING l.company_id, l.released_seq",
        params,
    )
    released = {str(c): int(s) for c, s in await cur.fetchall()}
    if released:
        await conn.execute("SELECT pg_notify('wapool_leases', %s)", (",".join(released),))
    return released


@dataclass(frozen=True)
class Fence:
    """Who may write a company's PostgreSQL copy: this holder, under these epochs."""

    holder: str
    epochs: Mapping[str, int]
    #: Companies whose epoch PostgreSQL has not confirmed yet: nothing is written for them.
    unconfirmed: Set[str] = field(default_factory=frozenset)

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
