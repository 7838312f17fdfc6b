"""wapool beside what users run today, on one whatsmeow-shaped write stream, one table.

The same stream of key writes (COMPANIES companies, RATE transactions a second in all, each
company's writes one after another as a whatsmeow client's are; the statements whatsmeow's
sqlstore issues, from ``testing.whatsmeow_writes``) goes, one setup after the other, through:

* **wapool**: each company writes its local SQLite working store (capture triggers on), and
  wapool's mirror carries the changes to PostgreSQL through its one pool;
* **direct**: whatsmeow's own PostgreSQL store as neonize opens it on a ``postgres://`` URL: one
  connection pool *per client*, emulated with Go's ``database/sql`` rules (connections opened on
  demand without limit, two kept idle, a broken connection retried twice on a new one, then the
  error goes back to whatsmeow), the same SQL against whatsmeow's tables in PostgreSQL.

Both reach PostgreSQL through the fault proxy with DELAY added each way (a managed database in
another datacentre); after STEADY seconds PostgreSQL goes away for OUTAGE seconds (``refuse``:
down, connections refused; ``blackhole``: a dead route), then comes back. Figures: the
client-visible write latency (from the moment the write was due to its commit, so queueing
behind a slow write counts) before the outage, the most PostgreSQL connections seen, the writes
that failed or were blocked (over 1 s) while PostgreSQL was away, and the time from its return
until everything is caught up: for wapool, every change written before the return is in
PostgreSQL; for the direct store, every company writes successfully again (what failed
meanwhile is lost: whatsmeow does not retry a failed store write).

    python bench/sidebyside.py [--companies 100] [--rate 200] [--delay 0.02]
                               [--steady 20] [--outage 30] [--after 30] [--mode refuse]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import random
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from wapool.db.migrations import migrate
from wapool.db.pool import Database
from wapool.devdb import Cluster, free_port
from wapool.settings import load_settings
from wapool.store.mirror import Mirror
from wapool.store.template import new_store, template_for
from wapool.store.working_store import connect, prepare_dir, transaction
from wapool.testing.fault_proxy import FaultProxy
from wapool.testing.whatsmeow_writes import WhatsmeowWriter
from wapool.whatsapp.neonize_store import create_schema

Statements = tuple[tuple[str, tuple[object, ...]], ...]
BLOCKED_SECONDS = 1.0
MAX_IDLE = 2  # database/sql's default
BAD_CONN_RETRIES = 2  # database/sql's maxBadConnRetries


class Stream(WhatsmeowWriter):
    """One company's whatsmeow-shaped transactions, generated but not executed."""

    def __init__(self, jid: str, seed: int) -> None:
        super().__init__(None, random.Random(seed))  # type: ignore[arg-type]
        self.jid = jid
        self.taken: Statements = ()

    def _txn(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        self.taken = statements

    def next(self) -> Statements:
        action = self.rng.choices(
            [self.session, self.identity, self.sender_key, self.message_secret, self.app_state,
             self.lid_mapping, self.contact, self.app_state_sync_key],
            weights=[30, 5, 15, 25, 5, 5, 5, 3],
        )[0]  # fmt: skip
        action()
        return self.taken


class GoPool:
    """A client's ``database/sql`` pool: opened on demand, unbounded, two idle kept."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._idle: list[psycopg.AsyncConnection[object]] = []

    async def run(self, statements: Statements) -> None:
        for attempt in range(BAD_CONN_RETRIES + 1):
            fresh = attempt == BAD_CONN_RETRIES or not self._idle
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True) if fresh \
                else self._idle.pop()  # fmt: skip
            try:
                await self._execute(conn, statements)
            except psycopg.OperationalError:
                await conn.close()
                if attempt == BAD_CONN_RETRIES:
                    raise
                continue
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
            else:
                await conn.close()
            return

    @staticmethod
    async def _execute(conn: psycopg.AsyncConnection[object], statements: Statements) -> None:
        sqls = [(sql.replace("?", "%s"), params) for sql, params in statements]
        if len(sqls) == 1:
            await conn.execute(sqls[0][0], sqls[0][1])  # type: ignore[arg-type]
            return
        async with conn.transaction():
            for sql, params in sqls:
                await conn.execute(sql, params)  # type: ignore[arg-type]


async def _company(
    n: int, jid: str, execute: Callable[[Statements], object], every: float, until: float,
    records: list[tuple[int, float, float, bool]],
) -> None:  # fmt: skip
    """Write at a steady pace (random phase), one write at a time, open loop."""
    stream = Stream(jid, n)
    due = time.monotonic() + random.Random(n).random() * every
    while due < until:
        if (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        ok = True
        try:
            result = execute(stream.next())
            if asyncio.iscoroutine(result):
                await result
        except (psycopg.Error, sqlite3.Error, OSError):
            ok = False
        records.append((n, due, time.monotonic(), ok))
        due += every


def _writer(kind: str, targets: list[str], jids: list[str], every: float, seconds: float,
            out: str) -> None:  # fmt: skip
    """Child process: the clients. Records (company, due, done, ok) per write, as JSON."""

    async def main() -> None:
        records: list[tuple[int, float, float, bool]] = []
        until = time.monotonic() + seconds
        executors: list[Callable[[Statements], object]] = []
        for target in targets:
            if kind == "wapool":
                conn = connect(Path(target))

                def sqlite_txn(statements: Statements, conn: sqlite3.Connection = conn) -> None:
                    with transaction(conn, immediate=True):
                        for sql, params in statements:
                            conn.execute(sql, params)

                executors.append(sqlite_txn)
            else:
                executors.append(GoPool(target).run)
        await asyncio.gather(*(
            _company(n, jids[n], executors[n], every, until, records) for n in range(len(targets))
        ))  # fmt: skip
        Path(out).write_text(json.dumps(records))

    asyncio.run(main())


async def _sample_connections(
    admin: str, database: str, seen: list[int], stop: asyncio.Event
) -> None:
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        while not stop.is_set():
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
            )
            row = await cur.fetchone()
            seen.append(int(row[0]) if row else 0)
            await asyncio.sleep(0.25)


def _low_port() -> int:
    while True:
        port = random.randrange(20_000, 32_000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def _stores(root: Path, companies: int) -> tuple[list[Path], list[str]]:
    template = template_for(root / "state", create_schema)
    paths, jids = [], []
    for n in range(companies):
        path = prepare_dir(root / "state", f"s{n:03d}")
        new_store(path, template)
        conn = connect(path)
        jids.append(WhatsmeowWriter(conn, random.Random(10_000 + n)).pair())
        conn.close()
        paths.append(path)
    return paths, jids


def _owed(paths: list[Path]) -> list[int]:
    """Per store, the last change written so far."""
    highs = []
    for path in paths:
        with sqlite3.connect(path) as conn:
            highs.append(
                int(
                    conn.execute("SELECT coalesce(max(seq), 0) FROM wapool_changelog").fetchone()[0]
                )
            )
    return highs


def _caught_up(paths: list[Path], owed: list[int]) -> bool:
    for path, high in zip(paths, owed, strict=True):
        with sqlite3.connect(path) as conn:
            low = conn.execute("SELECT min(seq) FROM wapool_changelog").fetchone()[0]
        if low is not None and low <= high:
            return False
    return True


async def _side(
    kind: str, args: argparse.Namespace, cluster: Cluster, root: Path
) -> dict[str, object]:
    database = f"bench_{kind}"
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")  # type: ignore[arg-type]
    url = cluster.url(database)
    paths, jids = _stores(root / kind, args.companies)
    proxy = FaultProxy("127.0.0.1", cluster.port, delay=args.delay)
    # Below the ephemeral range: while nothing listens (``refuse``), a client retrying an
    # ephemeral port can connect to itself and hold the port, so the proxy could not listen again.
    proxy.port = _low_port()
    await proxy.start()
    proxied = url.replace(f":{cluster.port}/", f":{proxy.port}/")
    mirror_task = None
    stop = asyncio.Event()
    if kind == "wapool":
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await migrate(conn)
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO companies (id) VALUES (%s)", [(p.parent.name,) for p in paths]
            )
        db = Database.from_settings(
            load_settings(None, database_url=proxied, state_dir=root / kind / "state")
        )
        await db.open(wait=True)
        mirror = Mirror(db)
        for path in paths:
            mirror.add(path.parent.name, path)
        assert await mirror.drain(120)
        mirror_task = asyncio.create_task(mirror.run(stop))
        targets = [str(p) for p in paths]
    else:
        with sqlite3.connect(paths[0]) as conn:
            ddl = [r[0] for r in conn.execute(
                "SELECT sql FROM sqlite_master WHERE name LIKE 'whatsmeow%' AND sql IS NOT NULL "
                "ORDER BY rowid")]  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in ddl:
                conn.execute(statement)  # type: ignore[arg-type]
            for path in paths:  # each client's device, as pairing stored it
                with sqlite3.connect(path) as store:
                    row = store.execute("SELECT * FROM whatsmeow_device").fetchone()
                marks = ", ".join(["%s"] * len(row))
                conn.execute(f"INSERT INTO whatsmeow_device VALUES ({marks})", row)  # type: ignore[arg-type]
        targets = [proxied] * args.companies
    seen: list[int] = []
    sampler = asyncio.create_task(
        _sample_connections(cluster.url("postgres"), database, seen, stop)
    )
    out = root / f"{kind}.json"
    seconds = args.steady + args.outage + args.after
    every = args.companies / args.rate
    # Spawned, not forked: a fork would inherit the proxy's listening socket (and the pool's
    # connections), and PostgreSQL would never look down to the clients.
    writer = multiprocessing.get_context("spawn").Process(
        target=_writer, args=(kind, targets, jids, every, seconds, str(out))
    )
    writer.start()
    await asyncio.sleep(args.steady)
    down = time.monotonic()
    await (proxy.refuse() if args.mode == "refuse" else proxy.blackhole())
    await asyncio.sleep(args.outage)
    owed = _owed(paths) if kind == "wapool" else []
    await proxy.restore()
    up = time.monotonic()
    caught = None
    if kind == "wapool":
        while time.monotonic() - up < args.after:
            if await asyncio.to_thread(_caught_up, paths, owed):
                caught = time.monotonic() - up
                break
            await asyncio.sleep(0.1)
    await asyncio.to_thread(writer.join)
    stop.set()
    await sampler
    if mirror_task is not None:
        await mirror_task
        mirror.close()
        await db.close()
    await proxy.close()
    records = json.loads(out.read_text())
    return _figures(kind, records, down, up, caught, seen)


def _figures(kind: str, records: list[list[float]], down: float, up: float,
             caught: float | None, seen: list[int]) -> dict[str, object]:  # fmt: skip
    steady = sorted(done - due for _, due, done, ok in records if done < down and ok)
    q = statistics.quantiles(steady, n=100)
    during = [(due, done, ok) for _, due, done, ok in records if due < up and done > down]
    failed = sum(1 for _, _, ok in during if not ok)
    blocked = sum(1 for due, done, ok in during if ok and done - due > BLOCKED_SECONDS)
    if kind != "wapool":  # caught up: every company has written successfully again
        first: dict[int, float] = {}
        for company, due, done, ok in records:
            if ok and due >= up:
                first[int(company)] = min(first.get(int(company), done), done)
        companies = {int(r[0]) for r in records}
        caught = max(first.values()) - up if set(first) == companies else None
    return {"kind": kind, "p50": q[49] * 1000, "p99": q[98] * 1000, "writes": len(records),
            "connections": max(seen), "failed": failed, "blocked": blocked,
            "outage_writes": len(during), "caught": caught}  # fmt: skip


def _table(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    print(f"{args.companies} companies, {args.rate:g} transactions/s in all, PostgreSQL "
          f"{args.delay * 1000:g} ms away each way, {args.outage:g} s outage ({args.mode}) after "
          f"{args.steady:g} s; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")  # fmt: skip
    print(
        "| store | write p50 | write p99 | PostgreSQL connections (max) | writes failed during "
        "the outage | writes blocked > 1 s | caught up after |"
    )
    print("|---|---|---|---|---|---|---|")
    names = {"wapool": "wapool (local store + mirror, one pool)",
             "direct": "whatsmeow's PostgreSQL store, a pool per client"}  # fmt: skip
    for row in rows:
        caught = "not within the run" if row["caught"] is None else f"{row['caught']:.1f} s"
        print(f"| {names[str(row['kind'])]} | {row['p50']:.1f} ms | {row['p99']:.1f} ms | "
              f"{row['connections']} | {row['failed']} of {row['outage_writes']} | "
              f"{row['blocked']} | {caught} |")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.CRITICAL)  # the outage is on purpose: its alerts are not news here
    root = Path(tempfile.mkdtemp(prefix="wapool-sidebyside-"))
    root.chmod(0o755)  # the postgres user must reach the cluster's folder
    cluster = Cluster(root / "pg", free_port(), durable=False)
    cluster.start()
    try:
        rows = [await _side(kind, args, cluster, root) for kind in ("wapool", "direct")]
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
    _table(rows, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--companies", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--steady", type=float, default=20.0)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=30.0)
    parser.add_argument("--mode", choices=("refuse", "blackhole"), default="refuse")
    sys.exit(asyncio.run(main(parser.parse_args())))
