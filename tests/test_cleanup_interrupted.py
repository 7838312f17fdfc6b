"""A cleanup whose daemon dies mid-run is detected, marked ``interrupted`` and run again within
the misfire grace: by the restarted daemon at once, or by any other daemon within a minute."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import time_machine

from tests.conftest import make_settings
from wapool.cleanup.scheduler import CleanupScheduler
from wapool.cleanup.service import CLEANUP_LOCK_ID, CleanupService
from wapool.db.pool import Database
from wapool.settings import Settings

pytestmark = pytest.mark.timeout(120)


def _expired_rows(database_url: str, company: str, count: int) -> None:
    """A company with a PostgreSQL copy only (no working store, no driver): pruned in
    PostgreSQL directly."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id, enabled) VALUES (%s, false)", (company,))
        conn.execute(
            "INSERT INTO store_copies (company_id, store_uuid, schema_version, "
            "schema_fingerprint, schema_ddl) VALUES (%s, gen_random_uuid(), 1, 'f', '')",
            (company,),
        )
        conn.execute(
            "INSERT INTO store_rows SELECT %s, 'whatsmeow_message_secrets', '[\"i' || n || '\"]', "
            "'[]', now() - interval '40 days' FROM generate_series(1, %s) n",
            (company, count),
        )


def _wait(check: Callable[[], object], what: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(database_url: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT status, error FROM cleanup_runs ORDER BY id").fetchall()
    return [(str(s), e) for s, e in rows]


def _daemon(database_url: str, state: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")} | {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(state),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        # The last 03:00 is always within a day: every start catches that slot up at once.
        "WAPOOL_CLEANUP_MISFIRE_GRACE_SECONDS": "86400",
        # The test blocks the cleanup's first delete; it must wait, not time out.
        "WAPOOL_DB_QUERY_TIMEOUT_SECONDS": "60",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "wapool", "run"], env=env, cwd=state, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _lock_free(database_url: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (CLEANUP_LOCK_ID,)).fetchone()
        if row and row[0]:
            # Released now, not when the server gets round to ending this session.
            conn.execute("SELECT pg_advisory_unlock(%s)", (CLEANUP_LOCK_ID,))
        return bool(row and row[0])


def test_daemon_killed_mid_cleanup_is_resumed_after_restart(
    database_url: str, tmp_path: Path
) -> None:
    _expired_rows(database_url, "idle", 500)
    # Hold the expired rows' locks: the cleanup's first delete waits on them, mid-run.
    locker = psycopg.connect(database_url)
    locker.execute("SELECT 1 FROM store_rows WHERE company_id = 'idle' FOR UPDATE")
    first = _daemon(database_url, tmp_path)
    try:
        _wait(lambda: _runs(database_url) == [("running", None)], "the cleanup to start")
        with psycopg.connect(database_url) as conn:
            _wait(
                lambda: conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'wapool' "
                    "AND wait_event_type = 'Lock'"
                ).fetchone(),
                "the cleanup's delete to wait",
            )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
        locker.rollback()
        locker.close()
    _wait(lambda: _lock_free(database_url), "PostgreSQL to end the dead daemon's session")
    assert _runs(database_url) == [("running", None)]  # what the dead daemon left

    second = _daemon(database_url, tmp_path)
    try:
        _wait(lambda: _runs(database_url)[0][0] == "done", "the slot to run again")
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=30)
    finally:
        second.kill()
    assert second.returncode == 0, err
    assert "event=cleanup_interrupted" in err
    assert "catch_up=True" in err.split("event=cleanup_scheduled", 1)[1].splitlines()[0]
    with psycopg.connect(database_url) as conn:
        left = conn.execute("SELECT count(*) FROM store_rows WHERE company_id = 'idle'").fetchone()
        runs = conn.execute("SELECT count(*), max(deleted_rows) FROM cleanup_runs").fetchone()
    assert left == (0,)
    assert runs == (1, 500)  # the same slot's row, claimed again


@pytest.fixture
async def service(db: Database, settings: Settings) -> CleanupService:
    return CleanupService(db, settings)


def _orphan(database_url: str, slot: datetime, status: str = "running") -> None:
    """A row as a daemon killed mid-run leaves it: its session (and lock) are gone."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cleanup_runs (slot, host, status) VALUES (%s, 'dead-host', %s)",
            (slot, status),
        )


async def test_live_run_is_left_alone_and_orphan_resumed(
    service: CleanupService, database_url: str
) -> None:
    _expired_rows(database_url, "idle", 50)
    slot = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    _orphan(database_url, slot)
    # A live run holds the lock in its session: its row is not an orphan.
    with psycopg.connect(database_url, autocommit=True) as runner:
        runner.execute("SELECT pg_advisory_lock(%s)", (CLEANUP_LOCK_ID,))
        assert await service.resume_interrupted(timedelta(hours=1)) is None
        assert await service.last_completed_slot() == slot
        assert _runs(database_url) == [("running", None)]
    # Its session ended without finishing (PostgreSQL drops the lock a moment after the close):
    # the next check marks it and runs the slot again.
    await asyncio.to_thread(_wait, lambda: _lock_free(database_url), "the lock to be dropped")
    result = await service.resume_interrupted(timedelta(hours=1))
    assert result is not None
    assert result.rows == 50
    assert _runs(database_url) == [("done", None)]
    assert await service.resume_interrupted(timedelta(hours=1)) is None


@pytest.mark.parametrize("case", ["beyond the grace", "a later slot ran"])
async def test_orphan_is_not_resumed_when_it_no_longer_matters(
    service: CleanupService, database_url: str, case: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    if case == "beyond the grace":
        _orphan(database_url, now - timedelta(hours=2))
    else:
        _orphan(database_url, now - timedelta(minutes=30))
        _orphan(database_url, now - timedelta(minutes=5), status="done")
    assert await service.resume_interrupted(timedelta(hours=1)) is None
    # A restarted daemon does not count it as completed; it is marked for the record.
    assert await service.last_completed_slot() == (
        None if case == "beyond the grace" else now - timedelta(minutes=5)
    )
    assert _runs(database_url)[0] == (
        "interrupted",
        "the daemon running it stopped before it finished",
    )


async def test_scheduler_asks_for_a_resume_every_minute(tmp_path: Path) -> None:
    asked: list[timedelta] = []

    async def resume(grace: timedelta) -> None:
        asked.append(grace)

    async def run(slot: datetime) -> None:
        pass

    settings = make_settings(None, tmp_path, cleanup_misfire_grace_seconds=3600)
    day = datetime(2026, 11, 29, 12, tzinfo=UTC)
    with time_machine.travel(day, tick=False) as traveller:
        scheduler = CleanupScheduler(settings, run, resume=resume)
        await scheduler.start()
        for minute in (1, 2):
            traveller.move_to(day + timedelta(minutes=minute, seconds=1))
            scheduler.scheduler.wakeup()
            for _ in range(5):
                await asyncio.sleep(0.01)
        await scheduler.stop()
    assert asked == [timedelta(hours=1)] * 2
