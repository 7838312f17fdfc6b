"""Single writer (invariant 6): leases with fencing epochs, and two real daemons on one database."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import new_store, run_cli
from tests.daemon import Daemon, Daemons
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.leases import Fence, Leases
from wapool.store.mirror import Mirror

pytestmark = pytest.mark.timeout(120)


async def test_lease_takeover_raises_the_epoch_and_fences_the_stale_writer(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    add_companies(database_url, "962302")
    first = Leases(db, "host-a", seconds=3)
    second = Leases(db, "host-b", seconds=3)
    assert await first.acquire(["962302"]) == {"962302": 1}
    assert await second.acquire(["962302"]) == {}  # held and not expired
    path = new_store(whatsmeow_template, tmp_path, "962302")
    writer = writer_for(path, 1)
    stale = Mirror(db, fence=first.fence())
    stale.add("962302", path)
    assert await stale.drain(10)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE company_leases SET expires_at = now() - interval '1 second'")
    assert await second.acquire(["962302"]) == {"962302": 2}
    assert await first.renew() == ["962302"]  # the old holder learns it lost the lease
    # ...but suppose its mirror still writes under the old epoch
    stale.fence = Fence(first.holder, {"962302": 1})
    writer.random_transaction()
    await stale.tick()
    assert stale.stats.companies["962302"].rejected is not None
    assert "stale writer" in (stale.stats.companies["962302"].rejected or "")
    fresh = Mirror(db, fence=second.fence())
    fresh.add("962302", path)
    assert await fresh.drain(10)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT epoch FROM store_copies").fetchone() == (2,)
    writer.conn.close()
    stale.close()
    fresh.close()


def _daemon(daemons: Daemons, database_url: str, state: Path, name: str) -> Daemon:
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(state),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_LEASE_SECONDS": "3",
        "WAPOOL_CACHE_SWEEP_SECONDS": "1",
        "WAPOOL_NODE_NAME": name,
    }
    return daemons.start(env, cwd=state.parent, log=state.parent / f"{name}.log")


def _holders(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT company_id, holder FROM company_leases WHERE holder <> ''")
        return dict(rows.fetchall())


def _wait(predicate: object, timeout: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_two_daemons_never_drive_the_same_company(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    add_companies(database_url, "a", "b", "c")
    one = _daemon(daemons, database_url, tmp_path / "one", "one")
    _wait(lambda: len(_holders(database_url)) == 3, 30)
    two = _daemon(daemons, database_url, tmp_path / "two", "two")
    two.wait_for("event=daemon_ready")
    assert set(_holders(database_url).values()) == {"one"}
    assert "state=connected" not in two.text()  # no client while one holds
    one.send_signal(signal.SIGKILL)
    one.wait(10)
    killed_at = time.monotonic()
    _wait(lambda: set(_holders(database_url).values()) == {"two"}, 30)
    _wait(lambda: two.text().count("state=connected") == 3, 30)
    # Within the lease (3 s) plus one reconcile (1 s), with slack for a loaded machine.
    assert time.monotonic() - killed_at < 15
    connected = [line for line in two.text().splitlines() if "state=connected" in line]
    assert {line.split("company=")[1].split()[0] for line in connected} == {"a", "b", "c"}
    assert two.stop(timeout=40) == 0
    assert _holders(database_url) == {}  # a clean stop hands the leases back


def test_a_second_daemon_on_the_same_state_directory_refuses_to_start(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    state = tmp_path / "state"
    _daemon(daemons, database_url, state, "one").wait_for("event=daemon_ready")
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(state)}
    second = run_cli("run", env=env, cwd=tmp_path, timeout=30)
    assert second.returncode == 1
    assert second.stderr.strip().endswith(
        f"another wapool daemon is running on {state}; each daemon needs its own state directory"
    )
