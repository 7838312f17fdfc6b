"""An unreadable store is not a corrupt one (issue 12, defect 1), reproduced as reported: the
daemon runs as a user that is not root (root reads any file), changes pile up during a
PostgreSQL outage, the daemon stops, ``chmod 000`` hits its store, PostgreSQL comes back and
the daemon starts again. The store must be waited for (alerted, retried), never replaced; once
readable again, every change it owed reaches PostgreSQL."""

from __future__ import annotations

import os
import shutil
import time

import psycopg
import pytest

from tests.conftest import proxied
from tests.fault_rig import RigDaemon, missing_from, pending_changes, postgres_rows, run_as, until
from tests.nonroot import nonroot_python, workdir
from wapool.testing.fault_proxy import FaultProxy

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]
OWED = 225


async def test_an_unreadable_store_is_waited_for_never_replaced(
    database_url: str, proxy: FaultProxy
) -> None:
    nobody = nonroot_python()
    work = workdir("unreadable-")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme')")
    env = {
        "WAPOOL_DATABASE_URL": proxied(database_url, proxy),
        "WAPOOL_STATE_DIR": str(work / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_SIMULATED_CHURN_PER_SECOND": "100",
    }  # the registry sweep stays at 60 s: retries follow their own backoff
    store = work / "state" / "acme" / "store.db"
    log = work / "daemon.log"

    first = RigDaemon(env, work, log, nobody)
    try:
        await first.wait_for("state=connected", timeout=60)
        await proxy.refuse()  # PostgreSQL away: the changes wait in the store
        await until(lambda: len(pending_changes(store)) >= OWED, 60, f"{OWED} pending changes")
        await first.stop()
    finally:
        first.end()
    owed = pending_changes(store)
    assert len(owed) >= OWED
    damaged_before = store.read_bytes()
    store.chmod(0o000)
    await proxy.restore()

    second = RigDaemon(env | {"WAPOOL_SIMULATED_CHURN_PER_SECOND": "0"}, work, log, nobody)
    try:
        text = await second.wait_for("event=store_unreadable", timeout=60)
        assert "Permission denied" in text or "unable to open" in text
        await second.wait_for("event=http_listening")
        code, body = await second.get("/readyz")
        assert code == 503
        assert "acme" in body
        await second.wait_for("event=store_unavailable", count=2, timeout=30)  # retried
        assert "store_restored" not in second.text()
        # Nothing beside the store (the company's inbox files are another matter).
        assert sorted(p.name for p in store.parent.glob("store.db*")) == ["store.db"]
        assert store.read_bytes() == damaged_before
        assert second.text().count("event=store_unreadable") == 1  # alerted once

        store.chmod(0o600)  # the operator fixes the permission
        fixed_at = time.monotonic()
        await second.wait_for("state=connected", timeout=90)
        assert time.monotonic() - fixed_at < 45  # a retry, not the next 60-second sweep
        await until(lambda: not missing_from(postgres_rows(database_url, "acme"), owed), 60,
                    "the owed changes in PostgreSQL")  # fmt: skip
        assert (await second.get("/readyz"))[0] == 200
        assert await second.stop() == 0
    finally:
        second.end()
    assert "store_restored" not in second.text()
    assert not [p for p in store.parent.iterdir() if "replaced" in p.name]
    verified = run_as(nobody, ["verify"], env | {"WAPOOL_DATABASE_URL": database_url}, work)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert os.stat(store).st_uid == 65534
    shutil.rmtree(work)
