"""The cleanup's schedule on a travelled clock, misfires, catch-up, and one run per cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import time_machine

from tests.conftest import make_settings
from tests.test_mirror import add_companies
from wapool.cleanup.scheduler import CleanupScheduler, cleanup_trigger, previous_fire
from wapool.cleanup.service import CleanupService
from wapool.db.pool import Database
from wapool.settings import Settings

pytestmark = pytest.mark.timeout(60)

DAY = datetime(2026, 11, 29, tzinfo=UTC)


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return make_settings(None, tmp_path, **overrides)


def test_cron_default_fires_at_three_utc_once_a_day(tmp_path: Path) -> None:
    trigger = cleanup_trigger(_settings(tmp_path))
    fires, fire = [], trigger.get_next_fire_time(None, DAY)
    while fire < DAY + timedelta(days=10):
        fires.append(fire)
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    assert fires == [DAY + timedelta(days=d, hours=3) for d in range(10)]
    assert previous_fire(trigger, DAY + timedelta(hours=3, minutes=5), timedelta(hours=1)) == (
        DAY + timedelta(hours=3)
    )
    assert previous_fire(trigger, DAY + timedelta(hours=5), timedelta(hours=1)) is None


class Recorder:
    def __init__(self) -> None:
        self.slots: list[datetime] = []
        self.last: datetime | None = None

    async def run(self, slot: datetime) -> None:
        self.slots.append(slot)

    async def last_slot(self) -> datetime | None:
        return self.last


async def _tick(scheduler: CleanupScheduler) -> None:
    scheduler.scheduler.wakeup()
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_travelled_clock_fires_at_three_and_not_otherwise(tmp_path: Path) -> None:
    recorder = Recorder()
    with time_machine.travel(DAY, tick=False) as traveller:
        scheduler = CleanupScheduler(
            _settings(tmp_path), recorder.run, last_slot=recorder.last_slot
        )
        await scheduler.start()
        for offset in (timedelta(hours=1), timedelta(hours=2, minutes=59, seconds=59)):
            traveller.move_to(DAY + offset)
            await _tick(scheduler)
        assert recorder.slots == []
        traveller.move_to(DAY + timedelta(hours=3))
        await _tick(scheduler)
        assert recorder.slots == [DAY + timedelta(hours=3)]
        for offset in (
            timedelta(hours=3, minutes=30),
            timedelta(hours=23),
            timedelta(days=1, hours=2),
        ):
            traveller.move_to(DAY + offset)
            await _tick(scheduler)
        assert len(recorder.slots) == 1
        traveller.move_to(DAY + timedelta(days=1, hours=3, seconds=1))
        await _tick(scheduler)
        assert recorder.slots == [DAY + timedelta(hours=3), DAY + timedelta(days=1, hours=3)]
        await scheduler.stop()


@pytest.mark.parametrize(("late", "runs"), [(timedelta(minutes=50), 1), (timedelta(hours=2), 0)])
async def test_run_missed_within_grace_runs_once(
    tmp_path: Path, late: timedelta, runs: int
) -> None:
    """The loop was blocked (or the host suspended) over 03:00: within the grace, one run."""
    recorder = Recorder()
    settings = _settings(tmp_path, cleanup_misfire_grace_seconds=3600)
    with time_machine.travel(DAY + timedelta(hours=2), tick=False) as traveller:
        scheduler = CleanupScheduler(settings, recorder.run, last_slot=recorder.last_slot)
        await scheduler.start()
        traveller.move_to(DAY + timedelta(hours=3) + late)
        await _tick(scheduler)
        await _tick(scheduler)
        assert len(recorder.slots) == runs
        await scheduler.stop()


@pytest.mark.parametrize(
    ("started", "last", "runs"),
    [
        (timedelta(hours=3, minutes=10), DAY - timedelta(hours=21), 1),  # missed today's slot
        (timedelta(hours=3, minutes=10), DAY + timedelta(hours=3), 0),  # another node ran it
        (timedelta(hours=5), DAY - timedelta(hours=21), 0),  # beyond the grace
    ],
)
async def test_daemon_started_after_a_missed_slot_catches_up_once(
    tmp_path: Path, started: timedelta, last: datetime, runs: int
) -> None:
    recorder = Recorder()
    recorder.last = last
    with time_machine.travel(DAY + started, tick=False):
        scheduler = CleanupScheduler(
            _settings(tmp_path), recorder.run, last_slot=recorder.last_slot
        )
        await scheduler.start()
        await _tick(scheduler)
        await _tick(scheduler)
        await scheduler.stop()
    assert recorder.slots == [DAY + timedelta(hours=3)] * runs


@pytest.fixture
async def two_dbs(settings: Settings) -> AsyncIterator[tuple[Database, Database]]:
    first, second = Database.from_settings(settings), Database.from_settings(settings)
    await first.open(wait=True)
    await second.open(wait=True)
    yield first, second
    await first.close()
    await second.close()


async def test_two_daemons_one_run_per_slot(
    two_dbs: tuple[Database, Database], settings: Settings, database_url: str
) -> None:
    add_companies(database_url, "remote")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO store_copies (company_id, store_uuid, schema_version, "
            "schema_fingerprint, schema_ddl) VALUES ('remote', gen_random_uuid(), 1, 'f', '')"
        )
        conn.execute(
            "INSERT INTO store_rows SELECT 'remote', 'whatsmeow_message_secrets', "
            "'[\"i' || n || '\"]', '[]', now() - interval '40 days' FROM generate_series(1, 20000) n"
        )
    services = [CleanupService(db, settings) for db in two_dbs]
    slot = DAY + timedelta(hours=3)
    results = await asyncio.gather(*(s.run(slot) for s in services))
    assert sum(r is not None for r in results) == 1
    assert [r.rows for r in results if r is not None] == [20_000]
    # The slower node, arriving after the first one finished, does not run it again.
    assert await services[1].run(slot) is None
    with psycopg.connect(database_url) as conn:
        runs = conn.execute("SELECT slot, status, deleted_rows FROM cleanup_runs").fetchall()
    assert runs == [(slot, "done", 20_000)]
    assert await services[0].last_completed_slot() == slot
