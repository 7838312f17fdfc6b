"""Cleanup benchmark: rows deleted per second, the longest working-store lock, the mirror's lag
and the slowest client write while the cleanup runs.

    python bench/cleanup.py [--rows 10000000] [--companies 1] [--concurrency 2] [--rate 200]

``--companies`` stores made by neonize holding ``--rows`` expired rows between them (half
message secrets, half sender keys), the same rows in their PostgreSQL copies, a throwaway
cluster with fsync off. While the cleanup runs, a separate process writes ``--rate``
whatsmeow-shaped transactions per second into the stores (round robin) and the mirror runs as
in the daemon. Targets (issues 5 and 17): >= 100,000 rows/s, no lock over 200 ms, client
write p99 <= 20 ms while it runs; each figure is printed with the command that reproduces it,
the machine's load average and whether it meets its target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from figures import load_average, percentile

from wapool.cleanup.executor import CleanupRun
from wapool.cleanup.policy import RetentionPolicy
from wapool.db.migrations import migrate
from wapool.db.pool import Database
from wapool.devdb import Cluster, free_port
from wapool.settings import load_settings
from wapool.store.capture import drop_capture, install_capture
from wapool.store.mirror import Mirror
from wapool.store.schema import quote, read_schema
from wapool.store.working_store import connect, json_array_sql, prepare_dir
from wapool.testing.whatsmeow_writes import WhatsmeowWriter
from wapool.whatsapp.neonize_store import create_schema

TABLES = ("whatsmeow_message_secrets", "whatsmeow_sender_keys")


def _fill(path: Path, rows: int) -> str:
    conn = connect(path)
    install_capture(conn)
    writer = WhatsmeowWriter(conn, random.Random(1))
    jid = writer.pair()
    drop_capture(conn)  # bulk history, as if written long ago and mirrored since
    conn.execute("BEGIN")
    half = rows // 2
    conn.executemany(
        "INSERT INTO whatsmeow_message_secrets VALUES (?, ?, ?, ?, ?)",
        ((jid, f"c{n % 5000}@s.whatsapp.net", f"s{n}@s.whatsapp.net", f"{n:016X}", os.urandom(32))
         for n in range(half)),
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO whatsmeow_sender_keys VALUES (?, ?, ?, ?)",
        ((jid, f"{n % 3000}@g.us", f"s{n}@s.whatsapp.net", os.urandom(200))
         for n in range(rows - half)),
    )  # fmt: skip
    conn.execute("COMMIT")
    install_capture(conn, recheck=False)
    conn.close()
    return jid


def _copy_to_postgres(path: Path, url: str, company: str) -> None:
    old = datetime.now(UTC) - timedelta(days=60)
    conn = connect(path)
    schema = read_schema(conn)
    with (
        psycopg.connect(url) as pg,
        pg.cursor().copy(
            "COPY store_rows (company_id, tbl, pk, image, written_at) FROM STDIN"
        ) as copy,
    ):
        for table in TABLES:
            spec, name = schema.table(table), quote(table)
            query = (f"SELECT {json_array_sql(name, spec.key_columns)}, "
                     f"{json_array_sql(name, spec.columns)} FROM {name}")  # fmt: skip
            for key, image in conn.execute(query):
                copy.write_row((company, table, key, image, old))
    conn.close()


def _client(paths: list[str], rate: float, stop: Any, out: Any) -> None:
    writers = []
    for path in paths:
        conn = connect(Path(path))
        writer = WhatsmeowWriter(conn, random.Random(2))
        writer.jid = conn.execute("SELECT jid FROM whatsmeow_device").fetchone()[0]
        writers.append(writer)
    latencies: list[float] = []
    start = time.monotonic()
    while not stop.is_set():
        writer = writers[len(latencies) % len(writers)]
        began = time.perf_counter()
        random.choice((writer.session, writer.message_secret, writer.sender_key))()
        latencies.append(time.perf_counter() - began)
        time.sleep(max(0.0, start + len(latencies) / rate - time.monotonic()))
    out.put((len(latencies), max(latencies or [0.0]), _p99(latencies)))


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values or [0])


async def main(rows: int, companies: int, concurrency: int, rate: float) -> None:
    root = Path(tempfile.mkdtemp(prefix="wapool-bench-cleanup-"))
    root.chmod(0o755)
    cluster = Cluster(root / "pg", free_port(), durable=False)
    cluster.start()
    cluster.ensure_database()
    ids = [f"bench{n:03d}" for n in range(companies)]
    try:
        async with await psycopg.AsyncConnection.connect(cluster.url()) as conn:
            await migrate(conn)
            for company in ids:
                await conn.execute("INSERT INTO companies (id) VALUES (%s)", (company,))
            await conn.commit()
        template = root / "template.db"
        create_schema([template])
        state = root / "state"
        started = time.monotonic()
        settings = load_settings(None, database_url=cluster.url(), state_dir=state)
        db = Database.from_settings(settings)
        await db.open(wait=True)
        mirror = Mirror(db)
        paths = []
        for n, company in enumerate(ids):
            path = prepare_dir(state, company)
            shutil.copyfile(template, path)
            _fill(path, rows // companies + (1 if n < rows % companies else 0))
            mirror.add(company, path)
            paths.append(path)
        assert await mirror.drain(60)  # the devices: creates the PostgreSQL copies
        for company, path in zip(ids, paths, strict=True):
            _copy_to_postgres(path, cluster.url(), company)
        print(f"built {rows:,} expired rows in {companies} stores "
              f"in {time.monotonic() - started:.0f} s")  # fmt: skip
        await _measure(db, mirror, settings.state_dir, paths, rate, rows, concurrency)
        mirror.close()
        await db.close()
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


async def _measure(
    db: Database,
    mirror: Mirror,
    state: Path,
    paths: list[Path],
    rate: float,
    rows: int,
    concurrency: int,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    client = ctx.Process(target=_client, args=([str(p) for p in paths], rate, stop, out))
    client.start()
    mirror_stop = asyncio.Event()
    mirror.stats.lags.clear()
    mirror_task = asyncio.create_task(mirror.run(mirror_stop))
    await asyncio.sleep(1)
    began = time.perf_counter()
    run = CleanupRun(db, RetentionPolicy.build(30), state, concurrency=concurrency)
    result = await run.run(datetime.now(UTC))
    seconds = time.perf_counter() - began
    lags = list(mirror.stats.lags)
    stop.set()
    writes, slowest, p99_write = await asyncio.to_thread(out.get, True, 60)
    client.join(10)
    drain_began = time.perf_counter()
    mirror_stop.set()
    await mirror_task
    drained = await mirror.drain(600)
    drain = time.perf_counter() - drain_began
    locks = result.lock_seconds
    rate_done = result.rows / seconds
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"{load_average()} (after the run)")
    print(f"deleted {result.rows:,} of {rows:,} rows in {seconds:.2f} s = "
          f"{rate_done:,.0f} rows/s [target >= 100,000: {_met(rate_done >= 100_000)}]")  # fmt: skip
    print(f"working-store write locks: {len(locks):,} batches, p50 "
          f"{percentile(locks, 0.5) * 1000:.1f} ms, p99 {percentile(locks, 0.99) * 1000:.1f} ms, "
          f"longest {result.longest_lock_seconds * 1000:.1f} ms "
          f"[target <= 200 ms: {_met(result.longest_lock_seconds <= 0.2)}]")  # fmt: skip
    print(f"  {result.rechecks} batches rechecked against PostgreSQL, longest under the lock "
          f"{result.longest_recheck_seconds * 1000:.1f} ms; {result.slow_rechecks} too slow")  # fmt: skip
    print(f"client writes while it ran: {writes:,}, p99 {p99_write * 1000:.1f} ms, "
          f"slowest {slowest * 1000:.1f} ms [target p99 <= 20 ms: {_met(p99_write <= 0.02)}]")  # fmt: skip
    print(f"mirror lag while it ran: p50 {statistics.median(lags) * 1000:.1f} ms, "
          f"p99 {_p99(lags) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms ({len(lags):,} changes)")  # fmt: skip
    print(f"mirror caught up with the deletes {drain:.1f} s after the cleanup ended "
          f"(drained: {drained})")  # fmt: skip
    with contextlib.suppress(Exception):
        left = await db.fetch(
            "SELECT count(*) FROM store_rows WHERE tbl = ANY(%s)", (list(TABLES),)
        )
        print(f"rows left in PostgreSQL in the pruned tables: {left[0][0]:,}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--companies", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.companies, args.concurrency, args.rate))
