"""Several real daemons on one database and one simulated WhatsApp server, as the multi-node
tests drive them: seeded companies, who holds what, waiting on conditions, per-company downtime
from the server's journal, and ``wapool verify`` on every host."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import make_settings, new_store, run_cli
from tests.daemon import Daemon, Daemons
from tests.simserver import SimServerProcess
from tests.test_mirror import add_companies
from wapool.db.pool import Database
from wapool.store.mirror import Mirror
from wapool.store.working_store import connect
from wapool.testing.whatsmeow_writes import WhatsmeowWriter

SLACK = 2


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {timeout:.0f} s: {what}"
        time.sleep(0.2)


def seed(url: str, template: Path, state: Path, count: int, prefix: str = "c") -> list[str]:
    """Paired companies whose copies are in PostgreSQL: every daemon restores the same device."""
    companies = [f"{prefix}{n:03d}" for n in range(count)]
    add_companies(url, *companies)
    asyncio.run(seed_copies(url, template, state, companies))
    return companies


async def seed_copies(url: str, template: Path, state: Path, companies: list[str]) -> None:
    """Pair these (registered) companies in stores under ``state`` and mirror them into
    PostgreSQL, so every daemon restores the same device."""
    db = Database.from_settings(make_settings(url, state))
    await db.open(wait=True)
    mirror = Mirror(db)
    try:
        for company in companies:
            path = new_store(template, state, company)
            conn = connect(path)
            WhatsmeowWriter(conn, random.Random(company)).pair()
            conn.close()
            mirror.add(company, path)
        assert await mirror.drain(60)
    finally:
        mirror.close()
        await db.close()


class Fleet:
    def __init__(
        self, url: str, root: Path, daemons: Daemons, server: SimServerProcess, lease: float
    ) -> None:
        self.url, self.root, self.server, self.lease = url, root, server, lease
        self._daemons = daemons
        self.running: dict[str, Daemon] = {}

    def env(self, name: str) -> dict[str, str]:
        return {
            "WAPOOL_DATABASE_URL": self.url,
            "WAPOOL_STATE_DIR": str(self.root / name),
            "WAPOOL_WHATSAPP_BACKEND": "simulated",
            "WAPOOL_SIMULATED_SERVER": str(self.server.socket),
            "WAPOOL_SIMULATED_CHURN_PER_SECOND": "2",
            "WAPOOL_LEASE_SECONDS": str(self.lease),
            "WAPOOL_CACHE_SWEEP_SECONDS": "2",
            "WAPOOL_COMPANIES_PER_WORKER": "20",
            "WAPOOL_BALANCE_SLACK": str(SLACK),
            "WAPOOL_NODE_NAME": name,
        }

    def start(self, name: str, **extra: str) -> Daemon:
        daemon = self._daemons.start(self.env(name) | extra, cwd=self.root,
                                     log=self.root / f"{name}.log")  # fmt: skip
        self.running[name] = daemon
        return daemon

    def cli(self, name: str, *args: str, timeout: float = 120) -> str:
        result = run_cli(*args, env=self.env(name), cwd=self.root, timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def holders(self) -> dict[str, str]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT company_id, holder FROM company_leases "
                "WHERE holder <> '' AND expires_at > now()"
            ).fetchall()
        return dict(rows)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = dict.fromkeys(self.running, 0)
        for holder in self.holders().values():
            found[holder] = found.get(holder, 0) + 1
        return found

    def live(self) -> dict[str, str]:
        """Company -> node driving it, as the simulated server sees it."""
        return {c["company"]: c["node"] for c in self.server.stats()["live"].values()}

    def balanced(self, companies: int, nodes: Iterable[str]) -> bool:
        """Every company connected on the node that holds its lease, each node within its
        share and the slack."""
        names = list(nodes)
        share = -(-companies // len(names))
        counts = self.counts()
        live = self.live()
        holders = self.holders()
        return (
            len(live) == companies
            and all(holders.get(c) == n for c, n in live.items())
            and all(share - SLACK <= counts.get(n, 0) <= share + SLACK for n in names)
        )

    def verify_all(self, names: Iterable[str], companies: list[str]) -> None:
        """Every company verified EQUAL on a host (a host that stopped last may also have
        picked up a company another released at its own stop); nothing DIFFERENT anywhere."""
        equal: set[str] = set()
        for name in names:
            out = self.cli(name, "verify", "--timeout", "10", timeout=240)
            assert "DIFFERENT" not in out, out
            assert "UNREADABLE" not in out, out
            equal |= {line.split(":")[0] for line in out.splitlines() if ": EQUAL" in line}
        assert equal == set(companies)

    def stop_all(self) -> None:
        for daemon in self.running.values():
            daemon.send_signal(signal.SIGTERM)
        for name, daemon in self.running.items():
            assert daemon.wait(60) == 0, name


def downtimes(records: list[dict[str, Any]], since: float, until: float) -> list[float]:
    """Per company, each stretch without a live connection that began in [since, until]."""
    down: dict[str, float] = {}
    gaps: list[float] = []
    for record in sorted(records, key=lambda r: (r["at"], r["kind"] == "connect")):
        company = record["company"]
        if record["kind"] == "disconnect" and since <= record["at"] <= until:
            down[company] = record["at"]
        elif record["kind"] == "connect" and company in down:
            gaps.append(record["at"] - down.pop(company))
    gaps.extend(until - start for start in down.values())  # still down at the end
    return gaps


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0
