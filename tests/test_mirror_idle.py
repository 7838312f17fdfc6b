"""The mirror does not read a store nobody wrote to since it last found nothing pending (a
cold start of thousands of idle companies), and never misses a write because of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import new_store
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.store.mirror import Mirror
from wapool.store.verify import verify

pytestmark = pytest.mark.timeout(60)


async def test_an_idle_store_is_not_read_and_the_next_write_is_mirrored(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    add_companies(database_url, "idle", "busy")
    paths = {c: new_store(whatsmeow_template, tmp_path, c) for c in ("idle", "busy")}
    writers = {c: writer_for(p, n) for n, (c, p) in enumerate(paths.items())}
    mirror = Mirror(db)
    for company, path in paths.items():
        mirror.add(company, path)
    assert await mirror.drain(20)
    assert await mirror.tick() == 0  # nothing pending: both stores now known idle

    traced: dict[str, list[str]] = {"idle": [], "busy": []}
    for company, statements in traced.items():
        conn = mirror._targets[company].conn
        assert conn is not None
        conn.set_trace_callback(statements.append)
    writers["busy"].session()
    assert await mirror.tick() == 1
    assert not any("wapool_changelog" in s for s in traced["idle"]), traced["idle"]
    assert any("wapool_changelog" in s for s in traced["busy"])

    # Every later write reaches PostgreSQL, right after the look that found nothing, too.
    for _ in range(5):
        writers["idle"].session()
        assert await mirror.tick() == 1
        assert await mirror.tick() == 0
    for company, path in paths.items():
        writers[company].conn.close()
        assert (await verify(db, path, company)).equal
    mirror.close()
