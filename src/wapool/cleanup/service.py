"""A cleanup run as the daemon and ``wapool cleanup`` do it: under the cluster-wide advisory
lock, recorded in ``cleanup_runs`` (a cron slot runs once in the cluster), followed by a size
sample and the summary (Sentry, Telegram). Reporting never fails the run.

Companies driven by another daemon are left to it: at the same slot, every daemon that does not
run the cluster-wide cleanup prunes the companies it drives, in its own working stores.

A run whose daemon dies (killed, host lost) leaves its row ``running``. Whoever next holds the
cleanup lock knows that row is orphaned: the lock is a *session* lock held for the whole run on
one connection, and PostgreSQL releases it the moment that session ends, so while the lock is
free nobody is running a cleanup. That is exact and needs no clock: the holder's leases would
not do (a daemon driving no company still runs the cluster-wide cleanup) and a heartbeat column
would need a timeout guess and a write every few seconds. The orphan is marked ``interrupted``;
a daemon restarting catches its slot up at once, and every daemon checks each minute
(``resume_interrupted``) so the slot runs again within the misfire grace even if the dead
daemon never comes back. A run that resumes a slot claims the row anew (a new ``started_at``),
so a run that lost its lock without dying cannot overwrite the new run's outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from wapool.cleanup import report, sizes
from wapool.cleanup.executor import Cancelled, CleanupRun, Progress, RunResult
from wapool.cleanup.policy import RetentionPolicy
from wapool.cleanup.telegram import TelegramNotifier
from wapool.db.pool import UNAVAILABLE_ERRORS, Database
from wapool.errors import DatabaseUnavailable
from wapool.observability.redact import describe_error
from wapool.settings import Settings

log = logging.getLogger(__name__)

#: "wapool cleanup" as a 63-bit advisory lock id (the migrations use another one).
CLEANUP_LOCK_ID = 0x7761706F6F6C636C & 0x7FFF_FFFF_FFFF_FFFF


class CleanupService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        notifier: TelegramNotifier | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self.policy = RetentionPolicy.build(
            settings.key_retention_days, settings.cleanup_table_days
        )
        self._notifier = notifier
        #: The name this daemon's leases carry: its own companies are pruned here.
        self.holder = settings.lease_holder
        self.stop = stop or asyncio.Event()
        self.last: RunResult | None = None

    async def run(
        self,
        slot: datetime | None = None,
        *,
        company_id: str | None = None,
        progress: Progress | None = None,
    ) -> RunResult | None:
        """Run now; None when another node holds the lock or this slot already ran (then a
        scheduled run still prunes the companies this daemon drives, in its own stores)."""
        async with self._locked() as locked:
            claim = await self._begin(slot) if locked else None
            result = await self._carry_out(claim, company_id, progress)
        if result is None:
            reason = "slot already ran" if locked else "running elsewhere"
            log.info("cleanup_skipped", extra={"reason": reason, "slot": slot})
            if slot is not None:
                own = await self._execute(None, None, own_only=True)
                if own.rows or own.status != "done":
                    report.to_sentry(own)
            return None
        await self._report(result)
        return result

    async def resume_interrupted(self, grace: timedelta) -> RunResult | None:
        """Run again the latest scheduled slot whose daemon died, if it is within ``grace`` and
        no later slot ran since; None when there is nothing to resume or a live daemon runs it.

        Costs one indexed query when there is nothing to do, so every daemon can ask often."""
        since = datetime.now(UTC) - grace
        unfinished = await self._db.fetch(
            "SELECT 1 FROM cleanup_runs WHERE status IN ('running', 'interrupted') AND slot > %s "
            "LIMIT 1",
            (since,),
        )
        if not unfinished:
            return None
        async with self._locked() as locked:
            slot = await self._interrupted_slot(since) if locked else None
            claim = await self._begin(slot) if slot is not None else None
            if claim is not None:
                log.warning("cleanup_resumed", extra={"slot": str(slot)})
            result = await self._carry_out(claim, None, None)
        if result is not None:
            await self._report(result)
        return result

    async def _carry_out(
        self, claim: Claim | None, company_id: str | None, progress: Progress | None
    ) -> RunResult | None:
        if claim is None:
            return None
        result = await self._execute(company_id, progress)
        await self._finish(claim, result)
        return result

    async def _execute(
        self, company_id: str | None, progress: Progress | None, *, own_only: bool = False
    ) -> RunResult:
        run = CleanupRun(
            self._db, self.policy, self._settings.state_dir,
            batch_rows=self._settings.cleanup_batch_rows,
            concurrency=self._settings.cleanup_concurrency, holder=self.holder, stop=self.stop,
            progress=progress,
        )  # fmt: skip
        log.info(
            "cleanup_started", extra={"tables": ",".join(self.policy.tables), "own_only": own_only}
        )
        try:
            result = await run.run(datetime.now(UTC), company_id, own_only=own_only)
        except Cancelled:
            result = run.result
            result.status = "cancelled"
        except Exception as exc:
            log.exception("cleanup_error")
            result = run.result
            result.status, result.error = "failed", describe_error(exc)
        result.finished_at = result.finished_at or datetime.now(UTC)
        self.last = result
        return result

    async def _report(self, result: RunResult) -> None:
        report.to_sentry(result)
        size_rows: list[sizes.SizeRow] = []
        with contextlib.suppress(Exception):
            size_rows = await sizes.sample(self._db, datetime.now(UTC).date())
        if self._notifier is not None:
            await self._notifier.send(report.summary_text(result, size_rows))

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[bool]:
        """The session advisory lock, on a connection kept (autocommit) for the whole run."""
        async with self._db.pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (CLEANUP_LOCK_ID,))
                row = await cur.fetchone()
                locked = bool(row and row[0])
                try:
                    yield locked
                finally:
                    if locked:
                        with contextlib.suppress(Exception):
                            await conn.execute("SELECT pg_advisory_unlock(%s)", (CLEANUP_LOCK_ID,))
            finally:
                with contextlib.suppress(Exception):
                    await conn.set_autocommit(False)

    async def _begin(self, slot: datetime | None) -> Claim | None:
        """Claim the run's row (under the cleanup lock); None when the slot already ran."""
        await self._mark_interrupted()
        rows = await self._db.fetch(
            "INSERT INTO cleanup_runs (slot, host) VALUES (%s, %s) "
            "ON CONFLICT (slot) DO UPDATE SET status = 'running', started_at = now(), "
            "finished_at = NULL, host = EXCLUDED.host, error = NULL "
            "WHERE cleanup_runs.status IN ('cancelled', 'failed', 'interrupted') "
            "RETURNING id, started_at",
            (slot, socket.gethostname()),
        )
        return Claim(int(rows[0][0]), rows[0][1]) if rows else None

    async def _mark_interrupted(self) -> None:
        """Under the cleanup lock no run is alive: a row still ``running`` lost its daemon."""
        rows = await self._db.fetch(
            "UPDATE cleanup_runs SET status = 'interrupted', finished_at = now(), "
            "error = 'the daemon running it stopped before it finished' "
            "WHERE status = 'running' RETURNING id, slot, host, started_at"
        )
        for run_id, slot, host, started_at in rows:
            log.warning(
                "cleanup_interrupted",
                extra={"run": run_id, "slot": str(slot), "host": host, "started": str(started_at)},
            )

    async def _interrupted_slot(self, since: datetime) -> datetime | None:
        """The latest interrupted slot after ``since`` with no later slot done or running."""
        await self._mark_interrupted()
        rows = await self._db.fetch(
            "SELECT max(slot) FROM cleanup_runs r WHERE status = 'interrupted' AND slot > %s "
            "AND NOT EXISTS (SELECT 1 FROM cleanup_runs later WHERE later.slot > r.slot "
            "AND later.status IN ('done', 'running'))",
            (since,),
        )
        return rows[0][0] if rows and rows[0][0] is not None else None

    async def _finish(self, claim: Claim, result: RunResult) -> None:
        with contextlib.suppress(Exception):
            await self._db.execute(
                "UPDATE cleanup_runs SET finished_at = %s, status = %s, deleted_rows = %s, "
                "deleted_bytes = %s, error = %s WHERE id = %s AND started_at = %s",
                (
                    result.finished_at,
                    result.status,
                    result.rows,
                    result.bytes,
                    result.error,
                    claim.run_id,
                    claim.started_at,
                ),
            )

    async def last_completed_slot(self) -> datetime | None:
        """The latest slot done, or being run by a live daemon. Orphaned runs are marked
        ``interrupted`` first, so a daemon restarted after dying mid-run catches its slot up."""
        try:
            async with self._locked() as locked:
                if locked:
                    await self._mark_interrupted()
        except UNAVAILABLE_ERRORS as exc:
            raise DatabaseUnavailable(f"PostgreSQL unavailable: {describe_error(exc)}") from None
        rows = await self._db.fetch(
            "SELECT max(slot) FROM cleanup_runs WHERE status IN ('done', 'running')"
        )
        return rows[0][0] if rows and rows[0][0] is not None else None


@dataclass(frozen=True)
class Claim:
    """The ``cleanup_runs`` row a run owns; ``started_at`` tells this claim from a later one
    of the same slot (a resumed run reuses the row)."""

    run_id: int
    started_at: datetime
