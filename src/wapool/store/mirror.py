"""The mirror: one asyncio task that drains every company's change log into PostgreSQL.

Each tick reads a consistent, coalesced prefix of each company's log (round-robin, bounded by
``max_rows_per_tick`` but never splitting a company's prefix), applies them all in one
PostgreSQL transaction, then trims what was applied. While PostgreSQL is down it backs off with
full jitter and the logs keep growing on disk; nothing is ever dropped. Per outage and company,
one warning goes to Sentry; when the backlog is applied, one recovery event follows. While
``quiet`` (a daemon started without PostgreSQL: its own warning covers every company) neither is
sent. A company whose lease is unconfirmed (see ``leases``) or no longer held is not read
while so.
``drain_companies`` is a handoff's last step before the lease is given up.

It is one module because a tick is one invariant (a consistent prefix per company, applied
in one fenced transaction, trimmed only after commit); splitting the tick would split it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wapool.backoff import Backoff
from wapool.cache import FallbackCache
from wapool.clock import Clock, SystemClock
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.leases import Fence
from wapool.observability import alerts
from wapool.observability.redact import describe_error
from wapool.store import changelog, pg_copy
from wapool.store.disk_watch import DiskWatch
from wapool.store.faults import StoreFault
from wapool.store.schema import StoreSchema, read_schema
from wapool.store.snapshot import Snapshot, SnapshotTaker
from wapool.store.working_store import connect, transaction

log = logging.getLogger(__name__)

LAG_SAMPLES = 100_000
#: A tick applying more companies than this is a busy one: an applied prefix is then trimmed
#: from its store once ``TRIM_EVERY`` seconds (or ``changelog.TRIM_BATCH`` entries), not at
#: every tick; a trim is a write transaction on the store, the largest per-store cost of a
#: busy tick. Quieter ticks trim at once.
EAGER_TRIM_COMPANIES = 8
TRIM_EVERY = 1.0
#: What one purge counts for when sizing a tick's PostgreSQL timeout.
PURGE_ROWS = 20_000


@dataclass
class _Target:
    company_id: str
    path: Path
    conn: sqlite3.Connection | None = None
    schema: StoreSchema | None = None
    pending_rows: int = 0
    oldest_pending_at: float | None = None
    outage_started: float | None = None
    rejected: str | None = None
    #: The last error reading the store (logged when it changes, not at every tick).
    read_error: str | None = None
    #: Its outage began while the mirror was quiet: no recovery event either.
    quiet: bool = False
    #: When its pending rows were last counted while its lease was unconfirmed.
    counted_at: float = float("-inf")
    #: ``PRAGMA data_version`` of ``conn`` when nothing was pending (see ``Mirror._read``).
    idle_version: int | None = None
    #: The tick that last read the change log (or found it unchanged since an empty read).
    read_tick: int = 0
    #: ``PRAGMA data_version`` taken just before the last read of the change log.
    read_version: int | None = None
    #: Entries up to here are in PostgreSQL: the next read starts after it.
    applied_seq: int = 0
    #: Of those, how many are still in the local log (trimmed later: see ``_settle_locked``).
    untrimmed: int = 0
    trimmed_at: float = float("-inf")
    store_uuid: str = ""


class MirrorPart(Protocol):
    """Something else the mirror's loop drains into PostgreSQL, after the change logs."""

    @property
    def pending(self) -> int: ...

    async def tick(self) -> int:
        """Apply what is pending; the rows applied. Raises ``DatabaseUnavailable`` in outages."""
        ...


@dataclass(frozen=True)
class CompanyLag:
    pending_rows: int
    lag_seconds: float
    rejected: str | None


@dataclass
class MirrorStats:
    ticks: int = 0
    rows_applied: int = 0
    entries_applied: int = 0
    failures: int = 0
    companies: dict[str, CompanyLag] = field(default_factory=dict)
    #: Seconds from a change's local commit to its PostgreSQL commit, latest samples.
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))


class Mirror:
    """Drains the change logs of the companies ``add``-ed.

    With ``snapshots``, a drained store is put in that cache at most every ``snapshot_every``
    seconds; with ``state_dir``, its free space is watched each tick."""

    def __init__(
        self,
        db: Database,
        *,
        snapshots: FallbackCache[str, Snapshot] | None = None,
        clock: Clock | None = None,
        max_rows_per_tick: int = 50_000,
        poll_interval: float = 0.02,
        backoff: Backoff | None = None,
        snapshot_every: float = 60.0,
        state_dir: Path | None = None,
        fence: Fence | None = None,
    ) -> None:
        self._db = db
        self.fence = fence
        self._clock = clock or SystemClock()
        self._snapshots = (
            SnapshotTaker(snapshots, self._clock, snapshot_every) if snapshots is not None else None
        )
        self._disk = DiskWatch(state_dir) if state_dir is not None else None
        self._max_rows = max_rows_per_tick
        self._poll = poll_interval
        self._backoff = backoff or Backoff(base=0.2, cap=5.0)
        self._targets: dict[str, _Target] = {}
        self._order: list[str] = []
        self._leaving: list[_Target] = []
        self._start = 0
        self.stats = MirrorStats()
        self.wake = asyncio.Event()
        #: No per-company outage and recovery alerts (see the module docstring).
        self.quiet = False
        # One tick at a time; the thread lock also covers SQLite work left running in a
        # thread by a cancelled tick.
        self._tick_lock = asyncio.Lock()
        self._spread = random.Random()  # noqa: S311 - trim timing
        self._sqlite_lock = threading.Lock()
        #: Further sources drained by this loop after the change logs (the inbound messages:
        #: ``messaging.inbound_mirror``), each with ``tick() -> rows`` and ``pending``.
        self.parts: list[MirrorPart] = []
        #: Test seam: called at the points where a crash is most interesting ("collected",
        #: "applied" = committed in PostgreSQL but not yet trimmed, "trimming").
        self.fault: Callable[[str], None] = lambda _point: None

    # -- membership -------------------------------------------------------------------------

    def add(self, company_id: str, path: Path) -> None:
        if company_id not in self._targets:
            self._targets[company_id] = _Target(company_id, path)
            self._order.append(company_id)
            self.wake.set()

    def remove(self, company_id: str) -> None:
        """Stop mirroring a company; its connection closes before the next read."""
        target = self._targets.pop(company_id, None)
        if target is not None:
            self._order = [c for c in self._order if c != company_id]
            self._leaving.append(target)
            if self._snapshots is not None:
                self._snapshots.forget(company_id)

    async def let_go(self, company_id: str) -> None:
        """Stop mirroring a company and close its connection now (its file is about to move),
        its log trimmed of what was applied."""
        target = self._targets.get(company_id)
        self.remove(company_id)
        async with self._tick_lock:
            await asyncio.to_thread(self._close_leaving_locked, target)

    def _close_leaving_locked(self, target: _Target | None = None) -> None:
        with self._sqlite_lock:
            if target is not None and target.untrimmed and target.conn is not None:
                self._trim_safely(target)
            self._close_leaving()

    def close(self) -> None:
        for company_id in list(self._targets):
            self.remove(company_id)
        with self._sqlite_lock:
            self._close_leaving()

    def _close_leaving(self) -> None:
        while self._leaving:
            # Not trimmed now: its file may have been replaced meanwhile (a restore).
            self._drop_conn(self._leaving.pop())

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                applied = await self.tick()
            except DatabaseUnavailable:
                await self._sleep(stop, self._backoff.next_delay())
                continue
            except Exception:
                # A bug or an unexpected database error: report it, back off, keep the logs.
                log.exception("mirror_tick_failed")
                self.stats.failures += 1
                await self._sleep(stop, self._backoff.next_delay())
                continue
            self._backoff.reset()
            if applied == 0:
                await self._sleep(stop, self._poll)

    async def drain(self, timeout: float) -> bool:
        """Tick until nothing is pending (True) or the timeout passes (False)."""
        deadline = self._clock.monotonic() + timeout
        while self._clock.monotonic() < deadline:
            with contextlib.suppress(DatabaseUnavailable):
                await self.tick()
                if all(t.pending_rows == 0 for t in self._targets.values()) and not any(
                    p.pending for p in self.parts
                ):
                    await self._flush_trims(None)
                    return True
            await asyncio.sleep(min(self._poll, max(0.0, deadline - self._clock.monotonic())))
        return False

    async def drain_companies(self, companies: Iterable[str], timeout: float) -> bool:
        """Tick until these companies' change logs, read after this call began, are empty and
        applied (True), or the timeout passes (False: an outage, a rejection). For a handoff:
        their clients are stopped, so nothing is added meanwhile."""
        names = set(companies)
        since = self.stats.ticks  # a tick already running may have read before the call
        deadline = self._clock.monotonic() + timeout
        while self._clock.monotonic() < deadline:
            with contextlib.suppress(DatabaseUnavailable):
                async with self._tick_lock:  # only theirs: the others wait for the next tick
                    await self._tick(only=names)
                targets = [self._targets[c] for c in names if c in self._targets]
                if all(
                    t.read_tick > since and t.pending_rows == 0 and t.rejected is None
                    for t in targets
                ):
                    await self._flush_trims(names)
                    return True
            await asyncio.sleep(min(self._poll, max(0.0, deadline - self._clock.monotonic())))
        return False

    async def _flush_trims(self, only: set[str] | None) -> None:
        """Trim now what was applied and left in the logs (a drain ends with empty logs)."""

        def flush() -> None:
            with self._sqlite_lock:
                for target in list(self._targets.values()):
                    if target.untrimmed and (only is None or target.company_id in only):
                        self._trim_safely(target)

        async with self._tick_lock:
            await asyncio.to_thread(flush)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        self.wake.clear()
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())}
        _, undone = await asyncio.wait(
            waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in undone | waiters:
            waiter.cancel()

    async def tick(self) -> int:
        """One round: read, apply, trim. Returns log entries applied (0: nothing was pending)."""
        async with self._tick_lock:
            applied = await self._tick()
            for part in self.parts:
                applied += await part.tick()
            return applied

    async def _tick(self, only: set[str] | None = None) -> int:
        self.stats.ticks += 1
        batches = await asyncio.to_thread(self._collect, only)
        self._publish_stats()
        if not batches:
            return 0
        self.fault("collected")
        # A purge deletes up to a cleanup batch (tens of thousands of rows) with one statement.
        rows = sum(len(b.prefix.changes) + PURGE_ROWS * len(b.prefix.purges) for b in batches)
        try:
            outcome = await pg_copy.apply(
                self._db, batches, timeout=self._db.query_timeout + rows / 20_000, fence=self.fence
            )
        except DatabaseUnavailable as exc:
            self.stats.failures += 1
            self._on_outage(batches, str(exc))
            raise
        self.fault("applied")
        committed = self._clock.time()
        for batch in batches:
            if batch.company_id in outcome.applied:
                self.stats.lags.extend(committed - c.at for c in batch.prefix.changes)
        await asyncio.to_thread(self._settle, batches, outcome)
        self._publish_stats()
        return sum(b.prefix.entries for b in batches if b.company_id in outcome.applied)

    # -- steps (run in a worker thread) ------------------------------------------------------

    def _collect(self, only: set[str] | None = None) -> list[pg_copy.Batch]:
        with self._sqlite_lock:
            return self._collect_locked(only)

    def _collect_locked(self, only: set[str] | None = None) -> list[pg_copy.Batch]:
        self._close_leaving()
        if self._disk is not None:
            self._disk.check()
        now = self._clock.monotonic()
        for target in list(self._targets.values()):  # applied earlier, idle since
            if target.untrimmed and now - target.trimmed_at >= TRIM_EVERY:
                self._trim_safely(target)
        batches: list[pg_copy.Batch] = []
        total = 0
        order, targets = list(self._order), dict(self._targets)  # the loop may change them
        if only is not None:
            order = [c for c in order if c in only]
        count = len(order)
        for i in range(count):
            target = targets[order[(self._start + i) % count]]
            if total >= self._max_rows:
                break
            if self.fence is not None and not self._may_write(target.company_id):
                self._count(target)  # re-validated first: never written under a lost epoch
                continue
            prefix = self._read(target)
            if prefix is None:
                continue
            batches.append(pg_copy.Batch(target.company_id, prefix, self._schema(target)))
            total += len(prefix.changes)
        if only is None:
            self._start = (self._start + 1) % max(count, 1)
        return batches

    def _read(self, target: _Target) -> changelog.Prefix | None:
        """The store's pending prefix. A store found with nothing pending beyond what was
        applied is not read again until another connection commits to it: ``PRAGMA
        data_version`` (a look at the WAL index, some 50 times cheaper than reading the log)
        changes at every such commit. It is taken in the read's own transaction, where it is
        the snapshot's: a commit after the snapshot always changes it (one read transaction
        per store and tick, not two)."""
        try:
            conn = self._conn(target)
            with transaction(conn):
                version = _data_version(conn)
                if version == target.idle_version:
                    target.read_tick = self.stats.ticks  # known empty: as good as a read
                    target.pending_rows, target.oldest_pending_at = 0, None
                    return None
                target.idle_version = None
                prefix = changelog.read_prefix(
                    conn, after_seq=target.applied_seq, own_transaction=False
                )
            # What was pending when read (counted in the read's own snapshot: no second look).
            pending = (
                changelog.Pending(prefix.entries, prefix.oldest_at)
                if prefix
                else changelog.Pending(0, None)
            )
            target.read_version = version
            if prefix is None:
                target.idle_version = version
        except (sqlite3.Error, OSError, StoreFault) as exc:
            error = describe_error(exc)
            if error != target.read_error:
                log.error(
                    "mirror_read_failed", extra={"company": target.company_id, "error": error}
                )
            target.read_error = error
            self._drop_conn(target)
            return None
        if target.read_error is not None:
            log.warning("mirror_read_recovered", extra={"company": target.company_id})
            target.read_error = None
        target.pending_rows, target.oldest_pending_at = pending.rows, pending.oldest_at
        target.read_tick = self.stats.ticks
        if prefix and target.schema and target.schema.fingerprint != prefix.fingerprint:
            target.schema = None
        return prefix

    def _may_write(self, company_id: str) -> bool:
        """Held under a confirmed epoch (a lease just lost is being let go: not an error)."""
        assert self.fence is not None
        return company_id in self.fence.epochs and company_id not in self.fence.unconfirmed

    def _count(self, target: _Target) -> None:
        """Keep the pending rows shown (at most once a second) for a store not read now."""
        now = self._clock.monotonic()
        if now - target.counted_at < 1.0:
            return
        target.counted_at = now
        with contextlib.suppress(sqlite3.Error, OSError, StoreFault):
            pending = changelog.pending(self._conn(target), target.applied_seq)
            target.pending_rows, target.oldest_pending_at = pending.rows, pending.oldest_at

    def _settle(self, batches: list[pg_copy.Batch], outcome: pg_copy.Outcome) -> None:
        with self._sqlite_lock:
            self._settle_locked(batches, outcome)

    def _settle_locked(self, batches: list[pg_copy.Batch], outcome: pg_copy.Outcome) -> None:
        for batch in batches:
            target = self._targets.get(batch.company_id)
            if target is None:
                continue
            if batch.company_id in outcome.rejected:
                self._reject(target, outcome.rejected[batch.company_id])
                continue
            target.rejected = None
            if pg_copy.device_deleted(batch):
                alerts.device_deleted(target.company_id)
            self.stats.rows_applied += len(batch.prefix.changes)
            self.stats.entries_applied += batch.prefix.entries
            if target.outage_started is not None:
                duration = self._clock.monotonic() - target.outage_started
                target.outage_started = None
                if not target.quiet:
                    alerts.postgres_recovered(target.company_id, duration, batch.prefix.entries)
                target.quiet = False
            try:
                self._applied(target, batch.prefix, eager=len(batches) <= EAGER_TRIM_COMPANIES)
            except (sqlite3.Error, OSError, StoreFault) as exc:
                # In PostgreSQL already: the next tick applies the prefix again (idempotent)
                # and tries the trim again; other companies are not held up.
                log.error(
                    "mirror_trim_failed",
                    extra={"company": target.company_id, "error": describe_error(exc)},
                )
                self._drop_conn(target)

    def _applied(self, target: _Target, prefix: changelog.Prefix, *, eager: bool) -> None:
        """``prefix`` is committed in PostgreSQL: read after it from now on, and trim it now
        or later (a crash in between replays it: harmless, see ``pg_copy``)."""
        target.applied_seq, target.store_uuid = prefix.high_seq, prefix.store_uuid
        target.untrimmed += prefix.entries
        if len(prefix.purges) < changelog.MAX_PURGES:  # not cut short: all it saw is applied
            # Unchanged since the read's snapshot: nothing beyond what was applied (the next
            # tick's look says so, and sets ``pending_rows`` to 0, without reading the log).
            target.idle_version = target.read_version
        due = self._clock.monotonic() - target.trimmed_at >= TRIM_EVERY
        if eager or due or target.untrimmed >= changelog.TRIM_BATCH:
            self._trim(target)

    def _trim(self, target: _Target) -> None:
        conn = self._conn(target)
        self.fault("trimming")
        changelog.trim(conn, target.applied_seq, target.untrimmed)
        # The next trim falls due ``TRIM_EVERY`` / 2 to ``TRIM_EVERY`` from now: stores trimmed
        # in the same tick (all of them, the first time) spread over the following ticks
        # instead of all falling due again in one, which made a busy host's slowest ticks.
        target.untrimmed = 0
        target.trimmed_at = self._clock.monotonic() - self._spread.random() * TRIM_EVERY / 2
        if self._snapshots is not None:  # it looks again itself, and at most once a minute
            self._snapshots.after_drain(
                target.company_id, conn, target.store_uuid, target.applied_seq
            )

    def _trim_safely(self, target: _Target) -> None:
        try:
            self._trim(target)
        except (sqlite3.Error, OSError, StoreFault) as exc:
            log.error(
                "mirror_trim_failed",
                extra={"company": target.company_id, "error": describe_error(exc)},
            )
            self._drop_conn(target)

    def _on_outage(self, batches: list[pg_copy.Batch], error: str) -> None:
        for batch in batches:
            target = self._targets.get(batch.company_id)
            if target is None or target.outage_started is not None:
                continue
            target.outage_started = self._clock.monotonic()
            if self.quiet:
                target.quiet = True
                continue
            age = self._snapshots.age(target.company_id) if self._snapshots else None
            alerts.postgres_outage(target.company_id, error, age)

    def _reject(self, target: _Target, reason: str) -> None:
        if target.rejected != reason:
            alerts.copy_rejected(target.company_id, reason)
        target.rejected = reason

    # -- helpers ----------------------------------------------------------------------------

    def _conn(self, target: _Target) -> sqlite3.Connection:
        if target.conn is None:
            target.conn = connect(target.path)
        return target.conn

    def _drop_conn(self, target: _Target) -> None:
        if target.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                target.conn.close()
        target.conn = None
        target.schema = None
        target.idle_version = None  # data_version is counted per connection
        target.read_version = None
        # Read the log from its start again: what was applied and not trimmed is replayed.
        target.applied_seq = target.untrimmed = 0

    def _schema(self, target: _Target) -> StoreSchema:
        if target.schema is None:
            target.schema = read_schema(self._conn(target))
        return target.schema

    def _publish_stats(self) -> None:
        now = self._clock.time()
        self.stats.companies = {
            t.company_id: CompanyLag(
                t.pending_rows,
                max(0.0, now - t.oldest_pending_at) if t.oldest_pending_at else 0.0,
                t.rejected,
            )
            for t in self._targets.values()
        }


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
