"""The daemon's scheduler: the cleanup on its cron (UTC) and the daily size sample.

APScheduler 3's ``AsyncIOScheduler`` with ``coalesce=True``, ``max_instances=1`` and an explicit
``misfire_grace_time`` (APScheduler's default is one second). Its in-memory job store forgets a
fire time missed while the daemon was down, so ``start`` looks at ``cleanup_runs``: a slot
missed by less than the grace time, and not run by any node, runs once at once. When
``cleanup_runs`` cannot be read, the catch-up is skipped (logged) and the next slot runs as usual.

A slot whose run was interrupted (its daemon died mid-run, see ``cleanup.service``) counts as
missed: the restarted daemon catches it up, and every minute each daemon asks the service to
resume such a slot, so it runs again within the grace even if the dead daemon stays down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from wapool.errors import DatabaseUnavailable
from wapool.observability.redact import describe_error
from wapool.settings import Settings

log = logging.getLogger(__name__)

RunCleanup = Callable[[datetime], Awaitable[object]]  # slot -> anything
LastSlot = Callable[[], Awaitable[datetime | None]]
Resume = Callable[[timedelta], Awaitable[object]]  # grace -> anything

#: How often each daemon looks for an interrupted run to resume (one indexed query).
RESUME_CHECK_SECONDS = 60.0


def cleanup_trigger(settings: Settings) -> Any:
    return CronTrigger.from_crontab(settings.cleanup_cron, timezone=UTC)


def previous_fire(trigger: Any, now: datetime, window: timedelta) -> datetime | None:
    """The latest fire time in ``(now - window, now]``, if any."""
    fire = trigger.get_next_fire_time(None, now - window)
    last = None
    while fire is not None and fire <= now:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return last


class CleanupScheduler:
    def __init__(
        self,
        settings: Settings,
        run_cleanup: RunCleanup,
        *,
        last_slot: LastSlot | None = None,
        sample: Callable[[], Awaitable[object]] | None = None,
        resume: Resume | None = None,
    ) -> None:
        self._run_cleanup = run_cleanup
        self._last_slot = last_slot
        self._resume = resume
        self._grace = timedelta(seconds=settings.cleanup_misfire_grace_seconds)
        self.trigger = cleanup_trigger(settings)
        self.scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": settings.cleanup_misfire_grace_seconds,
            },
        )
        self._sample = sample
        self._running: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        catch_up = await self._missed_slot()
        extra: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if catch_up else {}
        self.scheduler.add_job(self._cleanup_job, self.trigger, id="cleanup", **extra)
        if self._sample is not None:
            sample_trigger = CronTrigger(hour=0, minute=5, timezone=UTC)
            self.scheduler.add_job(self._sample, sample_trigger, id="size_sample")
        if self._resume is not None:
            every = min(RESUME_CHECK_SECONDS, max(1.0, self._grace.total_seconds() / 2))
            trigger = IntervalTrigger(seconds=every, timezone=UTC)
            self.scheduler.add_job(self._resume_job, trigger, id="cleanup_resume")
        self.scheduler.start()
        job = self.scheduler.get_job("cleanup")
        log.info(
            "cleanup_scheduled",
            extra={"next_run": str(job.next_run_time), "catch_up": bool(catch_up)},
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling; a running cleanup is cancelled at its next batch boundary."""
        self.scheduler.shutdown(wait=False)
        running = [task for task in self._running if not task.done()]
        if running:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*running)), timeout)

    async def _cleanup_job(self) -> None:
        now = datetime.now(UTC)
        slot = previous_fire(self.trigger, now, self._grace + timedelta(seconds=1)) or now
        with self._tracked():
            try:
                await self._run_cleanup(slot)
            except Exception:
                log.exception("cleanup_job_failed")

    async def _resume_job(self) -> None:
        assert self._resume is not None
        with self._tracked():
            try:
                await self._resume(self._grace)
            except DatabaseUnavailable:
                pass  # the outage is reported once elsewhere; the next check tries again
            except Exception:
                log.exception("cleanup_resume_failed")

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """A running job is waited for on stop (it stops at its next batch)."""
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            yield
        finally:
            self._running.discard(task)

    async def _missed_slot(self) -> datetime | None:
        missed = previous_fire(self.trigger, datetime.now(UTC), self._grace)
        if missed is None or self._last_slot is None:
            return None
        try:
            last = await self._last_slot()
        except DatabaseUnavailable as exc:
            log.warning("cleanup_catch_up_skipped", extra=_about(missed, exc))
            return None
        except Exception as exc:
            # A bug, not an outage: loud, but the daemon and the regular schedule go on.
            log.error("cleanup_catch_up_failed", extra=_about(missed, exc), exc_info=exc)
            return None
        return missed if last is None or last < missed else None


def _about(slot: datetime, exc: Exception) -> dict[str, str]:
    return {"slot": str(slot), "error": describe_error(exc)}
