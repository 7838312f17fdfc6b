"""One cleanup run: every company, every prunable table, then removed companies and tombstones.

A company driven by this daemon, or by none, is pruned in its working store here if there is
one (the source of truth; the deletes reach PostgreSQL through the mirror as purges) and in
PostgreSQL directly if there is none. A company driven by another daemon is left to that daemon
(``own_only`` runs). Work is batched, checked for a stop request between batches, and
idempotent: a run that was stopped is simply resumed by the next one, which finds what is still
expired. Up to ``concurrency`` companies are pruned at once.

Every run, cluster-wide or ``own_only``, also removes the replaced working stores this host kept
for longer than the key retention period (``store.leftovers``): they hold private keys too.

One module because the run's order (working stores, then PostgreSQL, then removed companies
and tombstones) and its stop checks are read together; the per-batch work is in ``pruner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from wapool.cleanup import postgres
from wapool.cleanup.policy import RetentionPolicy
from wapool.cleanup.pruner import BatchResult, Pruner, StalePage
from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.leases import current_holders
from wapool.store.leftovers import prune_replaced
from wapool.store.working_store import store_path

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 10.0
#: Bound on the PostgreSQL query a batch may make while it holds its store's write lock.
RECHECK_TIMEOUT = 0.1

Progress = Callable[[str, str, int], None]  # company, table, rows deleted so far in it


class Cancelled(Exception):
    """The run stopped at a batch boundary because a stop was requested."""


@dataclass
class RunResult:
    started_at: datetime
    finished_at: datetime | None = None
    #: (company, table) -> [rows, bytes] deleted
    deleted: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    longest_lock_seconds: float = 0.0
    #: How long each working-store batch held its write lock (seconds).
    lock_seconds: list[float] = field(default_factory=list)
    #: Batches checked against PostgreSQL because the mirror applied writes between the read
    #: and the delete.
    rechecks: int = 0
    longest_recheck_seconds: float = 0.0
    #: Batches rolled back because PostgreSQL did not answer the recheck in time.
    slow_rechecks: int = 0
    status: str = "running"
    error: str | None = None
    #: Replaced working stores removed from this host (company/file names).
    replaced_pruned: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(r for r, _ in self.deleted.values())

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.deleted.values())

    @property
    def duration_seconds(self) -> float:
        end = self.finished_at or datetime.now(UTC)
        return (end - self.started_at).total_seconds()

    def add(self, company: str, table: str, rows: int, size: int) -> None:
        entry = self.deleted.setdefault((company, table), [0, 0])
        entry[0] += rows
        entry[1] += size


class CleanupRun:
    def __init__(
        self,
        db: Database,
        policy: RetentionPolicy,
        state_dir: Path,
        *,
        batch_rows: int = 5_000,
        concurrency: int = 2,
        holder: str = "",
        stop: asyncio.Event | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._db = db
        self._policy = policy
        self._state_dir = state_dir
        self._batch_rows = batch_rows
        self._concurrency = max(1, concurrency)
        self._holder = holder
        self._stop = stop or asyncio.Event()
        self._progress = progress or (lambda _c, _t, _n: None)
        self._last_log = time.monotonic()
        self._holders: dict[str, str] = {}
        self.result = RunResult(started_at=datetime.now(UTC))

    async def run(
        self, now: datetime, company_id: str | None = None, *, own_only: bool = False
    ) -> RunResult:
        """Prune everything past retention at ``now``; raises ``Cancelled`` on a stop.

        ``own_only``: just the companies this daemon (``holder``) drives, in their working
        stores here: what a daemon does when another one runs the cluster-wide cleanup."""
        self.result = RunResult(started_at=datetime.now(UTC))
        removed_cutoff = self._policy.removed_cutoff(now)
        companies = await postgres.retained_companies(self._db, removed_cutoff)
        self._holders = await current_holders(self._db)
        if own_only:
            companies = [c for c in companies if self._holders.get(c) == self._holder]
        await self._companies([c for c in companies if company_id in (None, c)], now)
        if not own_only and (company_id is None or company_id not in companies):
            await self._removed(removed_cutoff, company_id)
        # Kept as long as key material is: the retention period of removed companies.
        pruned = await asyncio.to_thread(
            prune_replaced, self._state_dir, removed_cutoff, company_id
        )
        self.result.replaced_pruned = [f"{r.company_id}/{r.path.name}" for r in pruned]
        self.result.finished_at = datetime.now(UTC)
        self.result.status = "done"
        return self.result

    async def _companies(self, companies: list[str], now: datetime) -> None:
        """Up to ``concurrency`` companies at a time (their stores are separate files, so their
        write locks are too); one company's tables one after the other."""
        waiting = list(reversed(companies))

        async def worker() -> None:
            while waiting:
                company = waiting.pop()
                for table in self._policy.tables:
                    await self._table(company, table, self._policy.cutoff(table, now))

        workers = [asyncio.ensure_future(worker()) for _ in range(self._concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _table(self, company: str, table: str, cutoff: datetime) -> None:
        path = store_path(self._state_dir, company)
        holder = self._holders.get(company)
        if holder not in (None, self._holder):
            # Driven by another daemon: its working store (the source of truth) is there, and
            # that daemon prunes it itself (``own_only``). Pruning here, whether a stale local
            # store or the PostgreSQL copy, would make the copy and the store diverge.
            log.info("cleanup_left_to_holder", extra={"company": company, "table": table})
            return
        if path.exists():
            await self._prune_local(company, path, table, cutoff)
        elif holder is not None:
            log.warning("cleanup_store_missing", extra={"company": company, "table": table})
            return
        else:
            await self._batches(
                company,
                table,
                lambda: postgres.delete_expired_batch(self._db, company, table, cutoff),
            )
        self._finished(company, table)

    async def _prune_local(self, company: str, path: Path, table: str, cutoff: datetime) -> None:
        """Read a batch of expired keys, delete it at once, repeat: the shorter the time from
        the read to the delete, the less often the mirror applies a rewrite in between."""
        pruner = Pruner(path, batch_rows=self._batch_rows)
        try:
            await asyncio.to_thread(pruner.open)
            if not pruner.has_table(table):
                return
            after, reading_took = "", 0.0
            checkpoint: asyncio.Future[None] | None = None
            try:
                while True:
                    self._check_stop()
                    # Read the keys at the end of the gap between two batches: a read made
                    # just before the delete is rarely made stale by the mirror.
                    await asyncio.sleep(pruner.gap_left(after=reading_took))
                    began = time.monotonic()
                    page = await postgres.expired_page(
                        self._db, company, table, cutoff, after, pruner.batch_rows
                    )
                    reading_took = time.monotonic() - began
                    if not page.keys:
                        return
                    try:
                        batch = await self._delete(pruner, company, table, page, after, cutoff)
                    except StalePage:  # PostgreSQL was slow to answer the recheck: again
                        self.result.slow_rechecks += 1
                        continue
                    self.result.add(company, table, batch.rows, batch.bytes)
                    after = page.keys[-1][0]
                    self._report(company, table)
                    # The checkpoint takes no lock: it overlaps the gap and the next batch.
                    if checkpoint is not None:
                        await checkpoint
                    checkpoint = asyncio.ensure_future(asyncio.to_thread(pruner.checkpoint))
            finally:
                if checkpoint is not None:
                    with contextlib.suppress(Exception):  # the next run checkpoints anyway
                        await checkpoint
        finally:
            self.result.longest_lock_seconds = max(
                self.result.longest_lock_seconds, pruner.longest_lock
            )
            self.result.lock_seconds.extend(pruner.locks)
            self.result.rechecks += pruner.rechecks
            self.result.longest_recheck_seconds = max(
                self.result.longest_recheck_seconds, pruner.longest_recheck
            )
            await asyncio.to_thread(pruner.close)

    async def _delete(
        self,
        pruner: Pruner,
        company: str,
        table: str,
        page: postgres.Page,
        after: str,
        cutoff: datetime,
    ) -> BatchResult:
        loop = asyncio.get_running_loop()

        def rewritten() -> list[str]:
            """Runs in the pruner's thread, holding the store's write lock: keep it short."""
            query = postgres.rewritten_since(
                self._db, company, table, after, page.keys[-1][0], page.applied_seq
            )
            future = asyncio.run_coroutine_threadsafe(query, loop)
            try:
                return future.result(RECHECK_TIMEOUT)
            except (TimeoutError, DatabaseUnavailable):
                # Roll back rather than hold the lock: a real outage shows at the next read.
                raise StalePage from None
            finally:
                future.cancel()  # a no-op once it is done; else no health change

        delete = functools.partial(
            pruner.delete, table, page.keys, after=after, cutoff=cutoff,
            read_seq=page.applied_seq, rewritten=rewritten,
        )  # fmt: skip
        return await asyncio.to_thread(delete)

    async def _removed(self, cutoff: datetime, only: str | None) -> None:
        for company in await postgres.removed_companies(self._db, cutoff):
            if only is None or company == only:
                await self._batches(
                    company, postgres.REMOVED,
                    lambda c=company: postgres.delete_removed_batch(self._db, c, cutoff),  # type: ignore[misc]
                )  # fmt: skip
                await postgres.forget_removed(self._db, company, cutoff)
                self._finished(company, postgres.REMOVED)
        if only is None:
            await self._batches(
                "*", postgres.TOMBSTONES, lambda: postgres.delete_tombstones_batch(self._db, cutoff)
            )

    async def _batches(
        self, company: str, table: str, batch: Callable[[], Awaitable[tuple[int, int]]]
    ) -> None:
        """PostgreSQL deletes, one short statement at a time, until one comes back short."""
        while True:
            self._check_stop()
            rows, size = await batch()
            if rows:
                self.result.add(company, table, rows, size)
                self._report(company, table)
            if rows < postgres.PG_BATCH:
                return

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Cancelled

    def _report(self, company: str, table: str) -> None:
        rows = self.result.deleted.get((company, table), [0, 0])[0]
        self._progress(company, table, rows)
        if time.monotonic() - self._last_log >= PROGRESS_EVERY_SECONDS:
            self._last_log = time.monotonic()
            log.info(
                "cleanup_progress",
                extra={"company": company, "table": table, "rows": rows,
                       "total_rows": self.result.rows},
            )  # fmt: skip

    def _finished(self, company: str, table: str) -> None:
        rows, size = self.result.deleted.get((company, table), [0, 0])
        if rows:
            log.info(
                "cleanup_table_done",
                extra={"company": company, "table": table, "rows": rows, "bytes": size},
            )
