"""Stores a killed daemon left behind (``store.left_behind``): a store whose lease nobody held
when the daemon started again is kept for it, and watched: once another daemon takes that
lease (the restarted daemon's fair share need not give it all its old companies back), the
store is kept aside with what it owed, never left unreported in the state directory."""

from __future__ import annotations

import json
import random
from pathlib import Path

import psycopg
import pytest

from tests.conftest import mirror_once, new_store
from wapool.db.pool import Database
from wapool.store import left_behind
from wapool.store.working_store import connect
from wapool.testing.whatsmeow_writes import WhatsmeowWriter

pytestmark = pytest.mark.timeout(120)


def _lease(database_url: str, company: str, holder: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO company_leases (company_id, holder, epoch, expires_at) "
            "VALUES (%s, %s, 1, now() + interval '1 hour') ON CONFLICT (company_id) DO UPDATE "
            "SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at",
            (company, holder),
        )


async def test_a_store_whose_lease_was_free_is_watched_and_left_behind_once_taken(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with psycopg.connect(database_url, autocommit=True) as conn:
        for company in ("owes", "clean", "ours"):
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (company,))
    paths = {c: new_store(whatsmeow_template, state, c) for c in ("owes", "clean", "ours")}
    for company, path in paths.items():
        writer = WhatsmeowWriter(connect(path), random.Random(company))
        writer.pair()
        await mirror_once(db, company, path)
        if company == "owes":
            writer.session()  # committed just before the kill, never mirrored
        writer.conn.close()

    # Started again: nobody holds these leases (they expired, not yet taken over).
    count, watched = await left_behind.look(db, state, "one", ["owes", "clean", "ours"])
    assert (count, watched) == (0, {"owes", "clean", "ours"})
    assert all(p.exists() for p in paths.values())  # resumed as they are if taken back

    # This daemon takes one back; another daemon takes the other two.
    _lease(database_url, "ours", "one")
    _lease(database_url, "owes", "two")
    _lease(database_url, "clean", "two")
    count, watched = await left_behind.look(db, state, "one", watched, held={"ours"})
    assert (count, watched) == (2, set())
    assert paths["ours"].exists()
    assert not paths["clean"].exists()  # it owed nothing: removed
    assert not paths["owes"].exists()
    reports = list(paths["owes"].parent.glob("store.db.replaced-*.salvage.json"))
    assert [json.loads(r.read_text())["aside"] for r in reports] == [True]
