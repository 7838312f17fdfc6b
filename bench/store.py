"""Auth-store benchmarks: mirror throughput and lag, backlog drain, restore time.

    python bench/store.py [--companies 100] [--rate 2000] [--seconds 20]
    python bench/store.py --matrix [--seconds 60]   # 100 and 500 companies x 2,000 and 10,000/s

Runs on a throwaway cluster (durable settings but fsync off, as the tests) with stores made by
neonize; writes come from a separate process, one whatsmeow-shaped row change per transaction.
Targets (issue 17): p99 lag <= 50 ms at 2,000 row changes/s over 100 companies and <= 100 ms at
10,000/s over 500, nothing falling behind (the backlog sampled every second does not grow),
backlog drain >= 100,000 rows/s, restore of a 100,000-row store <= 1 s. Each figure is printed
with the command that measures it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from figures import load_average

from wapool.crypto import envelope, keyring, rotation
from wapool.crypto.envelope import DataKey, RowCipher
from wapool.db.migrations import migrate
from wapool.db.pool import Database
from wapool.devdb import Cluster, free_port
from wapool.settings import load_settings
from wapool.store import pg_copy, restore
from wapool.store.capture import install_capture
from wapool.store.mirror import Mirror
from wapool.store.working_store import connect, prepare_dir
from wapool.testing.whatsmeow_writes import WhatsmeowWriter
from wapool.whatsapp.neonize_store import create_schema


def _store(template: Path, state: Path, company: str, seed: int) -> Path:
    path = prepare_dir(state, company)
    shutil.copyfile(template, path)
    conn = connect(path)
    install_capture(conn)
    WhatsmeowWriter(conn, random.Random(seed)).pair()
    conn.close()
    return path


def _write_load(
    paths: list[str], rate: float, seconds: float, counter: multiprocessing.Value
) -> None:  # type: ignore[valid-type]
    writers = []
    for n, path in enumerate(paths):
        conn = connect(Path(path))
        writer = WhatsmeowWriter(conn, random.Random(n))
        writer.jid = conn.execute("SELECT jid FROM whatsmeow_device").fetchone()[0]
        writers.append(writer)
    actions = ("session", "sender_key", "message_secret", "identity", "contact")
    start = time.monotonic()
    done = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate)
        while done < due:
            writer = writers[done % len(writers)]
            getattr(writer, actions[done % len(actions)])()
            done += 1
        time.sleep(0.001)
    counter.value = done  # type: ignore[attr-defined]


async def _backlog_samples(mirror: Mirror, stop: asyncio.Event, samples: list[int]) -> None:
    """The rows pending over every store, once a second (the mirror's own count)."""
    while not stop.is_set():
        await asyncio.sleep(1.0)
        samples.append(sum(c.pending_rows for c in mirror.stats.companies.values()))


async def _lag(
    db: Database, paths: dict[str, Path], rate: float, seconds: float, command: str
) -> None:
    mirror = Mirror(db)
    for company, path in paths.items():
        mirror.add(company, path)
    assert await mirror.drain(60)
    mirror.stats.lags.clear()
    counter = multiprocessing.Value("l", 0)
    writer = multiprocessing.Process(
        target=_write_load, args=([str(p) for p in paths.values()], rate, seconds, counter)
    )
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(mirror.run(stop))
    sampled = asyncio.Event()
    backlog: list[int] = []
    sampler = asyncio.create_task(_backlog_samples(mirror, sampled, backlog))
    writer.start()
    await asyncio.to_thread(writer.join)
    sampled.set()
    await sampler
    caught_up = time.monotonic()
    assert await mirror.drain(60)
    caught_up = time.monotonic() - caught_up
    stop.set()
    await task
    elapsed = time.monotonic() - started
    lags = sorted(mirror.stats.lags)
    q = statistics.quantiles(lags, n=100)
    print(
        f"sustained load: {counter.value} row changes in {seconds:.0f} s over {len(paths)} companies "  # type: ignore[attr-defined]
        f"({counter.value / seconds:.0f}/s asked {rate:.0f}/s)"
    )  # type: ignore[attr-defined]
    print(
        f"  mirrored {mirror.stats.rows_applied} rows in {mirror.stats.ticks} ticks; "
        f"throughput {mirror.stats.rows_applied / elapsed:.0f} rows/s"
    )
    print(
        f"  lag p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms "
        f"({len(lags)} samples)"
    )
    half = len(backlog) // 2
    growing = half > 0 and max(backlog[half:]) > 2 * max(backlog[:half]) + rate * 0.1
    print(
        f"  backlog sampled each second: max {max(backlog, default=0)} rows, last "
        f"{backlog[-1] if backlog else 0}; {'FALLING BEHIND' if growing else 'not falling behind'}"
        f" over {seconds:.0f} s; drained {caught_up:.2f} s after the load stopped"
    )
    print(f"  ({command}; {load_average()})")
    mirror.close()


async def _backlog(db: Database, path: Path, company: str, rows: int, command: str) -> None:
    conn = connect(path)
    writer = WhatsmeowWriter(conn, random.Random(5))
    writer.jid = conn.execute("SELECT jid FROM whatsmeow_device").fetchone()[0]
    conn.execute("BEGIN")
    for i in range(rows):
        conn.execute(
            "INSERT INTO whatsmeow_message_secrets (our_jid, chat_jid, sender_jid, message_id, key) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                writer.jid,
                f"{i % 500}@s.whatsapp.net",
                "x@s.whatsapp.net",
                f"M{i:08d}",
                random.randbytes(32),
            ),
        )
    conn.execute("COMMIT")
    conn.close()
    mirror = Mirror(db)
    mirror.add(company, path)
    started = time.monotonic()
    assert await mirror.drain(300)
    took = time.monotonic() - started
    print(f"backlog drain: {rows} rows in {took:.2f} s = {rows / took:.0f} rows/s")
    print(f"  ({command}; {load_average()})")
    mirror.close()


async def _restore(db: Database, path: Path, company: str, command: str) -> None:
    meta = await pg_copy.fetch_meta(db, company)
    assert meta is not None
    started = time.monotonic()
    rows = await pg_copy.fetch_rows(db, company, timeout=60)
    fetched = time.monotonic()
    await asyncio.to_thread(restore.build_from_rows, path, meta, rows)
    took = time.monotonic() - started
    print(
        f"restore: {len(rows)} rows in {took:.3f} s (fetch {fetched - started:.3f} s, "
        f"build {took - (fetched - started):.3f} s)"
    )
    print(f"  ({command}; {load_average()})")


async def main(
    sizes: list[tuple[int, float]],
    seconds: float,
    modes: list[str],
    backlog_rows: int,
    restore_rows: int,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="wapool-bench-"))
    root.chmod(0o755)
    cluster = Cluster(root / "pg", free_port(), durable=False)
    cluster.start()
    cluster.ensure_database()
    try:
        async with await psycopg.AsyncConnection.connect(cluster.url()) as conn:
            await migrate(conn)
        template = root / "template.db"
        create_schema([template])
        state = root / "state"
        settings = load_settings(None, database_url=cluster.url(), state_dir=state)
        db = Database.from_settings(settings)
        await db.open(wait=True)
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        plaintext: list[str] = []
        for mode in modes:
            # Encryption on: every image sealed (AES-256-GCM) on its way into COPY, opened on
            # the way back (docs/encryption.md); off: plaintext, as without a master key.
            db.cipher = RowCipher(
                keyring.Keyring((keyring.new_key(),), "bench") if mode == "on" else None
            )
            for n, (companies, rate) in enumerate(sizes):
                ids = [f"{mode}{n}-{i:03d}" for i in range(companies)]
                with psycopg.connect(cluster.url(), autocommit=True) as conn:
                    for company in ids:
                        conn.execute("INSERT INTO companies (id) VALUES (%s)", (company,))
                paths = {c: _store(template, state, c, k) for k, c in enumerate(ids)}
                print(f"--- encryption {mode}, {companies} companies, {rate:.0f} changes/s "
                      f"(load average {os.getloadavg()[0]:.2f})")  # fmt: skip
                # With encryption on, the plaintext copies of the "off" round are re-encrypted
                # online meanwhile (wapool keys reencrypt), as in a migration under load.
                migrating = asyncio.create_task(_reencrypt(db, plaintext)) if mode == "on" else None
                command = (
                    f"python bench/store.py --companies {companies} --rate {rate:.0f} "
                    f"--seconds {seconds:.0f} --encryption {mode}"
                )
                await _lag(db, paths, rate, seconds, command)
                if migrating is not None:
                    print(f"  meanwhile re-encrypted {await migrating} plaintext rows online")
                    plaintext = []
                else:
                    plaintext += list(paths)
            with psycopg.connect(cluster.url(), autocommit=True) as conn:
                for company in (f"backlog-{mode}", f"restore-{mode}"):
                    conn.execute("INSERT INTO companies (id) VALUES (%s)", (company,))
            backlog = _store(template, state, f"backlog-{mode}", 99)
            command = f"python bench/store.py --backlog {backlog_rows} --encryption {mode}"
            await _backlog(db, backlog, f"backlog-{mode}", backlog_rows, command)
            command = f"python bench/store.py --restore {restore_rows} --encryption {mode}"
            await _restore_rows(db, template, state, f"restore-{mode}", restore_rows, command)
        if "on" in modes:
            _seal_cost()
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        await db.close()
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


async def _reencrypt(db: Database, companies: list[str]) -> int:
    done = 0
    for company in companies:
        done += (await rotation.reencrypt(db, company, batch=1000, pause=0.05)).rewritten
    return done


def _seal_cost(rows: int = 100_000) -> None:
    """CPU time of sealing and opening alone (one core), apart from PostgreSQL and the load."""
    dk = DataKey("bench", os.urandom(32))
    image = json.dumps(["x" + os.urandom(400).hex().upper(), "i1700000000"])
    started = time.process_time()
    sealed = [envelope.seal(dk, "b000", "whatsmeow_sessions", '["t1@s"]', i, image)
              for i in range(rows)]  # fmt: skip
    sealing = time.process_time() - started
    started = time.process_time()
    for i, value in enumerate(sealed):
        envelope.open_image({"bench": dk}, "b000", "whatsmeow_sessions", '["t1@s"]', i, value)
    opening = time.process_time() - started
    print(
        f"seal cost ({len(image)}-byte images, CPU time): seal {sealing / rows * 1e6:.1f} us/row "
        f"= {rows / sealing:,.0f} rows/s per core; open {opening / rows * 1e6:.1f} us/row"
    )


async def _restore_rows(
    db: Database, template: Path, state: Path, company: str, rows: int, command: str
) -> None:
    path = _store(template, state, company, 77)
    conn = connect(path)
    writer = WhatsmeowWriter(conn, random.Random(77))
    writer.jid = conn.execute("SELECT jid FROM whatsmeow_device").fetchone()[0]
    conn.execute("BEGIN")
    for i in range(rows):
        table = i % 4
        if table == 0:
            conn.execute(
                "INSERT INTO whatsmeow_sessions VALUES (?, ?, ?)",
                (writer.jid, f"{i}@s.whatsapp.net", random.randbytes(800)),
            )
        elif table == 1:
            conn.execute(
                "INSERT INTO whatsmeow_identity_keys VALUES (?, ?, ?)",
                (writer.jid, f"{i}@s.whatsapp.net", random.randbytes(32)),
            )
        elif table == 2:
            conn.execute(
                "INSERT INTO whatsmeow_sender_keys VALUES (?, ?, ?, ?)",
                (writer.jid, f"{i}@g.us", "x@s.whatsapp.net", random.randbytes(200)),
            )
        else:
            conn.execute(
                "INSERT INTO whatsmeow_message_secrets VALUES (?, ?, ?, ?, ?)",
                (writer.jid, "c@s.whatsapp.net", "x@s.whatsapp.net", f"M{i}", random.randbytes(32)),
            )
    conn.execute("COMMIT")
    conn.close()
    mirror = Mirror(db)
    mirror.add(company, path)
    assert await mirror.drain(120)
    mirror.close()
    await _restore(db, path, company, command)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--companies", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--matrix", action="store_true", help="100 and 500 companies x 2,000 and 10,000/s"
    )
    parser.add_argument("--backlog", type=int, default=100_000, help="rows of the backlog drain")
    parser.add_argument("--restore", type=int, default=100_000, help="rows of the restored store")
    parser.add_argument(
        "--encryption", choices=("off", "on", "both"), default="both", help="default: both"
    )
    args = parser.parse_args()
    modes = ["off", "on"] if args.encryption == "both" else [args.encryption]
    sizes = (
        [(c, r) for c in (100, 500) for r in (2000.0, 10000.0)]
        if args.matrix
        else [(args.companies, args.rate)]
    )
    asyncio.run(main(sizes, args.seconds, modes, args.backlog, args.restore))
