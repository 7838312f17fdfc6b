"""A cleanup run as the daemon and ``wapool cleanup`` do it: under the cluster-wide advisory
lock, recorded in ``cleanup_runs`` (a cron slot runs once in the cluster), followed by a size
sample and the summary (Sentry, Telegram). Reporting never fails the run.

Companies driven by another daemon are left to it: at the same slot, every daemon that does not
run the cluster-wide cleanup prunes the companies it drives, in its own working stores."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from wapool.cleanup import report, sizes
from wapool.cleanup.executor import Cancelled, CleanupRun, Progress, RunResult
from wapool.cleanup.policy import RetentionPolicy
from wapool.cleanup.telegram import TelegramNotifier
from wapool.db.pool import Database
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
            run_id = await self._begin(slot) if locked else None
            if run_id is not None:
                result = await self._execute(company_id, progress)
                await self._finish(run_id, result)
        if run_id is None:
            reason = "slot already ran" if locked else "running elsewhere"
            log.info("cleanup_skipped", extra={"reason": reason, "slot": slot})
            if slot is not None:
                own = await self._execute(None, None, own_only=True)
                if own.rows or own.status != "done":
                    report.to_sentry(own)
            return None
        await self._report(result)
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

    async def _begin(self, slot: datetime | None) -> int | None:
        rows = await self._db.fetch(
            "INSERT INTO cleanup_runs (slot, host) VALUES (%s, %s) "
            "ON CONFLICT (slot) DO UPDATE SET status = 'running', started_at = now(), "
            "finished_at = NULL, host = EXCLUDED.host, error = NULL "
            "WHERE cleanup_runs.status IN ('cancelled', 'failed') RETURNING id",
            (slot, socket.gethostname()),
        )
        return int(rows[0][0]) if rows else None

    async def _finish(self, run_id: int, result: RunResult) -> None:
        with contextlib.suppress(Exception):
            await self._db.execute(
                "UPDATE cleanup_runs SET finished_at = %s, status = %s, deleted_rows = %s, "
                "deleted_bytes = %s, error = %s WHERE id = %s",
                (
                    result.finished_at,
                    result.status,
                    result.rows,
                    result.bytes,
                    result.error,
                    run_id,
                ),
            )

    async def last_completed_slot(self) -> datetime | None:
        rows = await self._db.fetch(
            "SELECT max(slot) FROM cleanup_runs WHERE status IN ('done', 'running')"
        )
        return rows[0][0] if rows and rows[0][0] is not None else None
