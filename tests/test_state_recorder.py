"""Session states are written behind, many in one transaction; one PostgreSQL could not take
is written once it can (each company's latest), never dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from tests.conftest import make_settings, proxied
from tests.test_mirror import add_companies
from wapool.backoff import Backoff
from wapool.db.pool import Database
from wapool.session_actions import StateRecorder
from wapool.supervisor.session import State
from wapool.testing.fault_proxy import FaultProxy
from wapool.whatsapp import events as ev

pytestmark = pytest.mark.timeout(60)


def _states(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT company_id, state FROM session_states").fetchall()
    return {str(c): str(s) for c, s in rows}


async def _until(check: object, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "not recorded in time"
        await asyncio.sleep(0.05)


async def test_states_written_while_postgresql_is_away_arrive_when_it_returns(
    database_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    companies = [f"r{n}" for n in range(20)]
    add_companies(database_url, *companies)
    settings = make_settings(proxied(database_url, proxy), tmp_path)
    db = Database.from_settings(settings)
    await db.open(wait=True)
    recorder = StateRecorder(db, "node-a", Backoff(base=0.05, cap=0.2))
    try:
        for company in companies:
            recorder.add(company, State.STARTING, ev.Connected(), None)
        await _until(lambda: len(_states(database_url)) == 20)

        await proxy.refuse()
        for company in companies:
            recorder.add(company, State.CONNECTED, ev.Connected(), None)
        recorder.add("r0", State.RECONNECTING, ev.Disconnected("keep-alive"), None)
        await asyncio.sleep(1.0)  # several attempts fail meanwhile
        assert set(_states(database_url).values()) == {"starting"}
        await proxy.restore()

        expected = dict.fromkeys(companies, "connected") | {"r0": "reconnecting"}
        await _until(lambda: _states(database_url) == expected)
    finally:
        await db.close()
