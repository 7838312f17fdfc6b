"""Leases adopted from the state directory (a start without PostgreSQL) are re-validated before
the mirror writes anything for them: the same epoch is renewed and drained; a lease taken over
meanwhile is lost, and the mirror never wrote under it."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.conftest import new_store
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.leases import Leases
from wapool.store.mirror import Mirror

pytestmark = pytest.mark.timeout(120)


def _expire(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE company_leases SET expires_at = now() - interval '1 second'")


async def test_adopted_leases_are_confirmed_or_lost_before_anything_is_mirrored(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    add_companies(database_url, "kept", "taken")
    before = Leases(db, "host-a", seconds=3)
    epochs = await before.acquire(["kept", "taken"])
    _expire(database_url)  # host A died; its leases ran out
    other = Leases(db, "host-b", seconds=3)
    assert await other.acquire(["taken"]) == {"taken": 2}

    restarted = Leases(db, "host-a", seconds=3)  # host A, restarted without PostgreSQL
    restarted.adopt(epochs)
    assert restarted.resumable("kept")
    assert restarted.resumable("taken")
    assert not restarted.live("kept")  # only the start guard's offline door is open
    assert restarted.unconfirmed == {"kept", "taken"}

    paths = {c: new_store(whatsmeow_template, tmp_path, c) for c in ("kept", "taken")}
    writers = {c: writer_for(p, n) for n, (c, p) in enumerate(paths.items())}
    mirror = Mirror(db, fence=restarted.fence())
    for company, path in paths.items():
        writers[company].random_transaction()
        mirror.add(company, path)
    assert await mirror.tick() == 0  # nothing read, nothing written, nothing rejected
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM store_copies").fetchone() == (0,)

    assert await restarted.renew() == ["taken"]  # PostgreSQL is back: re-validation
    assert restarted.unconfirmed == frozenset()
    assert dict(restarted.held) == {"kept": epochs["kept"]}
    assert restarted.live("kept")
    assert not restarted.resumable("kept")
    mirror.remove("taken")  # as the runtime does: the client stopped, the store kept aside
    assert await mirror.drain(10)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT company_id, epoch FROM store_copies").fetchall()
    assert rows == [("kept", epochs["kept"])]
    mirror.close()
    for writer in writers.values():
        writer.conn.close()


async def test_a_renewal_that_fails_past_a_leases_end_leaves_it_unconfirmed(
    db: Database, database_url: str
) -> None:
    from wapool.clock import ManualClock
    from wapool.errors import DatabaseUnavailable

    add_companies(database_url, "p1")
    clock = ManualClock()
    leases = Leases(db, "host-a", seconds=3, clock=clock)
    await leases.acquire(["p1"])
    await db.close()  # PostgreSQL unreachable from here on
    with pytest.raises(DatabaseUnavailable):
        await leases.renew()
    assert leases.unconfirmed == frozenset()  # still within the lease: the epoch is ours
    clock.advance(4)
    with pytest.raises(DatabaseUnavailable):
        await leases.renew()
    assert leases.unconfirmed == {"p1"}
