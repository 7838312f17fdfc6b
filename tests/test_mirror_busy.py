"""A busy tick (many companies) trims each store at most once a second: the mirror reads after
what it applied, a crash before the trim replays it harmlessly, and a drain ends with every
log trimmed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import new_store
from tests.test_mirror import add_companies, writer_for
from wapool.clock import ManualClock
from wapool.db.pool import Database
from wapool.store.mirror import EAGER_TRIM_COMPANIES, Mirror
from wapool.store.verify import verify
from wapool.store.working_store import connect

pytestmark = pytest.mark.timeout(120)


def _logged(path: Path) -> int:
    conn = connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM wapool_changelog").fetchone()[0])
    finally:
        conn.close()


async def test_a_busy_tick_trims_later_and_a_crash_meanwhile_replays(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    companies = [f"busy{n}" for n in range(EAGER_TRIM_COMPANIES + 2)]
    add_companies(database_url, *companies)
    paths = {c: new_store(whatsmeow_template, tmp_path, c) for c in companies}
    writers = {c: writer_for(p, n) for n, (c, p) in enumerate(paths.items())}
    mirror = Mirror(db, clock=ManualClock())  # a second never passes: no trim falls due
    for company, path in paths.items():
        mirror.add(company, path)
    assert await mirror.tick() > 0  # the pairings; the first trim of a store is due at once
    assert all(_logged(p) == 0 for p in paths.values())

    for writer in writers.values():
        writer.session()
    assert await mirror.tick() == len(companies)
    assert all(_logged(p) == 1 for p in paths.values())  # applied, not trimmed yet

    for writer in writers.values():
        writer.session()
    assert await mirror.tick() == len(companies)  # only what came after the applied prefix
    assert all(_logged(p) == 2 for p in paths.values())

    # The process dies before trimming: a new mirror reads the logs from their start again.
    mirror.close()
    for writer in writers.values():
        writer.session()
    mirror = Mirror(db)
    for company, path in paths.items():
        mirror.add(company, path)
    assert await mirror.drain(30)
    for company, path in paths.items():
        assert _logged(path) == 0  # a drain ends with the logs trimmed
        assert (await verify(db, path, company)).equal
    mirror.close()
    for writer in writers.values():
        writer.conn.close()
