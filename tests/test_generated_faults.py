"""Invariant 7 under generated histories of local faults (issue 12), in the spirit of
``test_convergence``.

Each case is a seeded random history of one company served by a real daemon running as
``nobody`` (permissions bite) on the simulated backend, its state directory on a small tmpfs
(or under a file-size limit, see ``diskfull``): acknowledged writes (``wapool.testing.
acked_writes``) interleaved with PostgreSQL outages (proxy refuse and cut, in some cases a real
server stop), SIGKILLs of the daemon and its workers (some while writes go on), graceful
restarts, and local faults: permission flips and truncation of the stopped store, a full disk
under the running daemon. Then every fault is lifted, the daemon drains and stops, and:

* every acknowledged change is in PostgreSQL, or named as unsalvageable by the salvage report
  beside the replaced store that held it (its sequence number in a lost range, or its key);
* ``wapool verify`` finds the PostgreSQL copy equal to the working store.

``WAPOOL_FAULT_CASES`` sets how many cases run (default 3, under a minute each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import proxied
from tests.diskfull import SmallDisk
from tests.fault_rig import RigDaemon, postgres_rows, run_as
from tests.nonroot import UID, NonRoot, nonroot_python, workdir
from wapool.devdb import Cluster
from wapool.testing.fault_proxy import FaultProxy

CASES = int(os.environ.get("WAPOOL_FAULT_CASES", "3"))
PG_STOP_EVERY = 3  # one case in this many also stops the real server
STEPS = ["write", "sleep", "kill", "stop", "start", "chmod", "truncate", "outage", "heal", "full"]
WEIGHTS = [30, 10, 10, 5, 10, 6, 5, 8, 8, 6]

pytestmark = [pytest.mark.process, pytest.mark.timeout(240 * CASES + 120)]


@dataclass(frozen=True)
class Ack:
    inode: int
    seq: int
    image: str | None


class History:
    def __init__(
        self, seed: int, database_url: str, proxy: FaultProxy, cluster: Cluster, nobody: NonRoot
    ) -> None:
        self.seed, self.rng = seed, random.Random(seed)
        self.database_url, self.proxy, self.cluster, self.nobody = (
            database_url, proxy, cluster, nobody,
        )  # fmt: skip
        self.company = f"gen-{seed}"
        self.work = workdir(f"faults-{seed}-")
        self.disk = SmallDisk(self.work / "state", size_mb=24, owner=UID)
        self.store = self.work / "state" / self.company / "store.db"
        self.env = {
            "WAPOOL_DATABASE_URL": proxied(database_url, proxy),
            "WAPOOL_STATE_DIR": str(self.work / "state"),
            "WAPOOL_WHATSAPP_BACKEND": "simulated",
            "WAPOOL_SIMULATED_CHURN_PER_SECOND": "20",
            "WAPOOL_CACHE_SWEEP_SECONDS": "1",
            "WAPOOL_DB_CONNECT_TIMEOUT_SECONDS": "2",
        }
        self.daemon: RigDaemon | None = None
        self.acks: dict[tuple[str, str], list[Ack]] = {}
        self.trail: list[str] = []
        self.pg_stopped = False

    # -- steps ----------------------------------------------------------------------------

    async def run(self) -> None:
        await self.start()
        await self.daemon_connected(60)
        stop_pg_at = self.rng.randrange(10) if self.seed % PG_STOP_EVERY == 0 else -1
        for step in range(self.rng.randrange(8, 14)):
            op = "pgstop" if step == stop_pg_at else self.rng.choices(STEPS, WEIGHTS)[0]
            self.trail.append(op)
            await getattr(self, f"do_{op}")()

    async def do_write(self) -> None:
        if self.daemon is None or await self.connected():
            await self.write(self.rng.randrange(1, 25))

    async def do_sleep(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))

    async def do_kill(self) -> None:
        if self.daemon is None:
            return
        writes = None
        if await self.connected() and self.rng.random() < 0.5:
            writes = asyncio.ensure_future(self.write(40))  # the kill lands mid-writes
            await asyncio.sleep(self.rng.uniform(0.0, 0.5))
        await self.daemon.kill()
        self.daemon = None
        if writes is not None:
            await writes

    async def do_stop(self) -> None:
        if self.daemon is not None:
            await self.daemon.stop()
            self.daemon = None

    async def do_start(self) -> None:
        if self.daemon is None:
            await self.start()

    async def do_chmod(self) -> None:
        """The stopped store (or its folder) loses its permissions; the daemon starts; an
        operator puts them back a little later."""
        if self.daemon is not None or not self.store.exists():
            return
        target, mode = self.rng.choice([(self.store, 0o600), (self.store.parent, 0o700)])
        target.chmod(0o000)
        await self.write(3)  # refused: not acknowledged
        await self.start()
        assert self.daemon is not None
        with contextlib.suppress(AssertionError):  # not while PostgreSQL is away
            await self.daemon.wait_for("event=store_unreadable", timeout=10)
        await asyncio.sleep(self.rng.uniform(0.0, 2.0))
        target.chmod(mode)

    async def do_truncate(self) -> None:
        if self.daemon is not None or not self.store.exists():
            return
        size = self.store.stat().st_size
        os.truncate(self.store, int(size * self.rng.uniform(0.05, 0.95)))
        if self.rng.random() < 0.5:
            await self.write(self.rng.randrange(1, 10))  # into the damaged store

    async def do_outage(self) -> None:
        if self.rng.random() < 0.5:
            await self.proxy.refuse()
        else:
            self.proxy.cut()

    async def do_heal(self) -> None:
        await self.proxy.restore()
        if self.pg_stopped:
            self.cluster.start()
            self.pg_stopped = False

    async def do_pgstop(self) -> None:
        self.cluster.stop("immediate")
        self.pg_stopped = True

    async def do_full(self) -> None:
        if self.daemon is None:
            return
        self.disk.fill(self.daemon.pids())
        await self.write(5)
        await asyncio.sleep(self.rng.uniform(0.5, 4.0))
        self.disk.free(self.daemon.pids())

    # -- helpers --------------------------------------------------------------------------

    async def start(self) -> None:
        self.daemon = RigDaemon(
            self.env, self.work, self.work / "daemon.log", self.nobody,
            pipe_log=not self.disk.mounted,
        )  # fmt: skip

    async def connected(self) -> bool:
        if self.daemon is None or self.daemon.proc.poll() is not None:
            return False
        try:
            companies = (await self.daemon.status()).get("companies") or {}
        except (OSError, AssertionError):
            return False
        state = companies.get(self.company, {})  # type: ignore[union-attr]
        return bool(state.get("state") == "connected")

    async def daemon_connected(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self.connected():
            if asyncio.get_running_loop().time() > deadline:
                log = (self.work / "daemon.log").read_text(errors="replace")[-4000:]
                raise AssertionError(f"seed {self.seed}: never connected ({self.trail})\n{log}")
            await asyncio.sleep(0.2)

    async def write(self, count: int) -> None:
        """Acknowledged writes by a process of the daemon's user, beside the daemon."""
        proc = await asyncio.create_subprocess_exec(
            *self.nobody.command("-m", "wapool.testing.acked_writes", str(self.store),
                                 str(count), str(self.rng.randrange(2**32))),
            env=self.nobody.env(), cwd=self.work, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        for line in out.decode().splitlines():
            record = json.loads(line)
            for seq, table, op, key, image in record.get("changes", ()):
                ack = Ack(record["inode"], seq, image if op == "U" else None)
                self.acks.setdefault((table, key), []).append(ack)

    async def finish(self) -> None:
        """Lift every fault, let the daemon catch up, stop it cleanly."""
        await self.do_heal()
        if self.store.exists():
            self.store.chmod(0o600)
            self.store.parent.chmod(0o700)
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.disk.free(self.daemon.pids())
        else:
            await self.start()
        await self.daemon_connected(150)
        assert self.daemon is not None
        assert await self.daemon.stop(60) == 0
        assert "event=mirror_final_drain drained=True" in self.daemon.text(), self.trail
        self.daemon = None

    def check(self) -> tuple[int, int]:
        """Every acknowledged change in PostgreSQL or named; returns (acked, named)."""
        rows = postgres_rows(self.database_url, self.company)
        reports = _reports(self.store.parent)
        named = 0
        for key, acks in self.acks.items():
            held = rows.get(key)
            last = max((i for i, a in enumerate(acks) if a.image == held), default=-1)
            assert held is None or last >= 0, f"seed {self.seed}: {key} holds an unacked image"
            for ack in acks[last + 1 :]:
                assert _named(reports, key, ack), (
                    f"seed {self.seed}: acknowledged change of {key} (seq {ack.seq}) silently "
                    f"lost; history {self.trail}; reports {reports}"
                )
                named += 1
        verified = run_as(self.nobody, ["verify", self.company],
                          self.env | {"WAPOOL_DATABASE_URL": self.database_url}, self.work)  # fmt: skip
        assert verified.returncode == 0, f"seed {self.seed} {self.trail}: {verified.stdout}"
        return sum(len(a) for a in self.acks.values()), named

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.end()
        self.disk.close()
        shutil.rmtree(self.work, ignore_errors=True)


Report = tuple[int, list[tuple[int, int | None]], list[tuple[str, str]]]


def _reports(directory: Path) -> list[Report]:
    """(inode of the replaced store, lost sequence ranges, lost keys) of each salvage report."""
    found = []
    for path in directory.glob("store.db.replaced-*.salvage.json"):
        data = json.loads(path.read_text())
        kept = directory / data["kept_as"]
        if kept.exists():
            lost = [(int(a), None if b is None else int(b)) for a, b in data["lost"]]
            keys = [(str(t), str(k)) for t, k in data["lost_keys"]]
            found.append((kept.stat().st_ino, lost, keys))
    return found


def _named(reports: list[Report], key: tuple[str, str], ack: Ack) -> bool:
    return any(
        inode == ack.inode
        and (key in keys or any(a <= ack.seq and (b is None or ack.seq <= b) for a, b in lost))
        for inode, lost, keys in reports
    )


async def test_generated_local_faults_never_silently_drop_an_acknowledged_change(
    database_url: str, proxy: FaultProxy, running_cluster: Cluster
) -> None:
    nobody = nonroot_python()
    totals = [0, 0]
    for seed in range(CASES):
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (f"gen-{seed}",))
        history = History(seed, database_url, proxy, running_cluster, nobody)
        try:
            await history.run()
            await history.finish()
            acked, named = history.check()
            print(f"seed {seed}: {history.trail}: {acked} acknowledged, {named} named")
            totals[0] += acked
            totals[1] += named
        finally:
            await proxy.restore()
            running_cluster.start()
            history.close()
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("UPDATE companies SET enabled = false WHERE id = %s", (f"gen-{seed}",))
    assert totals[0] > 0, "no write was ever acknowledged"
    print(f"{totals[0]} acknowledged changes, {totals[1]} named as unsalvageable")
