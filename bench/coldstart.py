"""Cold start and memory: COMPANIES new companies, from `wapool run` to every one connected.

A throwaway cluster, COMPANIES companies registered (never run before: no working store, no
PostgreSQL copy, an empty state directory, so the whatsmeow template is made in the run too),
one daemon on the simulated backend. Figures: seconds from starting the daemon to the first
and to every company connected (``session_states``), the lease batches the daemon took (the
bring-up budget follows the pace it measures), then the memory of the daemon and its workers
once everything is up: RSS summed over the processes (what the target counts, shared pages
counted in each process) and PSS (shared pages split between the processes), per company.

Targets (issue 11): 500 companies <= 30 s, 2,000 <= 120 s; <= 5 MB RSS per company.

    python bench/coldstart.py [--companies 500 2000] [--churn 0.1] [--per-worker 50]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from wapool.devdb import Cluster, free_port

CONNECTED = "SELECT count(*) FROM session_states WHERE state = 'connected'"
TARGET_SECONDS = {500: 30.0, 2000: 120.0}
TARGET_MB_PER_COMPANY = 5.0


def _daemon(url: str, state: Path, churn: float, per_worker: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")} | {
        "WAPOOL_DATABASE_URL": url,
        "WAPOOL_STATE_DIR": str(state),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_SIMULATED_CHURN_PER_SECOND": str(churn),
        "WAPOOL_COMPANIES_PER_WORKER": str(per_worker),
        "WAPOOL_HTTP_ADDR": "127.0.0.1:0",
    }
    with open(state.parent / "daemon.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "wapool", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip


def _connected(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(CONNECTED).fetchone()
    return int(row[0]) if row else 0


def _tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _kib(pid: int, path: str, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/{path}").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _memory(root: int) -> tuple[int, int, int, int]:
    """(processes, RSS KiB summed, PSS KiB summed, the daemon's own RSS KiB)."""
    pids = _tree(root)
    rss = sum(_kib(p, "status", "VmRSS") for p in pids)
    pss = sum(_kib(p, "smaps_rollup", "Pss") for p in pids)
    return len(pids), rss, pss, _kib(root, "status", "VmRSS")


def _batches(log: Path) -> str:
    taken = re.findall(r"leases_taken.*?count=(\d+).*?budget=(\d+)", log.read_text())
    return ", ".join(f"{count} (budget {budget})" for count, budget in taken)


def _report(companies: int, churn: float, per_worker: int, first: float | None, every: float,
            load: tuple[float, float, float], root: Path) -> None:  # fmt: skip
    target = TARGET_SECONDS.get(companies)
    print(f"cold start, {companies} companies (simulated, churn {churn:g}/s per company, "
          f"{per_worker} per worker): first connected {first or 0:.1f} s, "
          f"all connected {every:.1f} s"
          + (f" (target <= {target:.0f} s)" if target else "")
          + f"; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"on {os.cpu_count()} cores")  # fmt: skip
    print(f"  lease batches: {_batches(root / 'daemon.log')}", flush=True)


def run(root: Path, companies: int, churn: float, per_worker: int, timeout: float) -> None:
    cluster = Cluster(root / "pg", free_port(), durable=False)
    cluster.start()
    try:
        cluster.ensure_database()
        url = cluster.url()
        subprocess.run([sys.executable, "-m", "wapool", "migrate"], check=True,
                       env=os.environ | {"WAPOOL_DATABASE_URL": url}, stdout=subprocess.DEVNULL)  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO companies (id) VALUES (%s)", [(f"c{n:05d}",) for n in range(companies)]
            )
        state = root / "state"
        state.mkdir()
        started = time.monotonic()
        daemon = _daemon(url, state, churn, per_worker)
        try:
            first = None
            while (up := _connected(url)) < companies:
                if first is None and up:
                    first = time.monotonic() - started
                if time.monotonic() - started > timeout or daemon.poll() is not None:
                    tail = (root / "daemon.log").read_text().splitlines()[-15:]
                    raise SystemExit(
                        f"only {up} of {companies} connected (daemon exit {daemon.poll()}); "
                        "the daemon's log ends:\n" + "\n".join(tail)
                    )
                time.sleep(0.2)
            every = time.monotonic() - started
            load = os.getloadavg()
            time.sleep(5)  # settle: workers done starting, the mirror drained the first images
            processes, rss, pss, own = _memory(daemon.pid)
            _report(companies, churn, per_worker, first, every, load, root)
            print(f"  memory: {processes} processes (daemon + workers), RSS {rss / 1024:.0f} MB "
                  f"= {rss / 1024 / companies:.2f} MB per company (target <= "
                  f"{TARGET_MB_PER_COMPANY:g}), PSS {pss / 1024:.0f} MB = "
                  f"{pss / 1024 / companies:.2f} MB per company; daemon alone RSS "
                  f"{own / 1024:.0f} MB", flush=True)  # fmt: skip
        finally:
            daemon.terminate()
            try:
                daemon.wait(120)
            except subprocess.TimeoutExpired:
                print("  (the daemon took over 120 s to stop: killed)")
                daemon.kill()
                daemon.wait(30)
    finally:
        cluster.stop("immediate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--companies", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--churn", type=float, default=0.1)
    parser.add_argument("--per-worker", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    for size in args.companies:
        with tempfile.TemporaryDirectory(prefix="wapool-coldstart-") as tmp:
            Path(tmp).chmod(0o755)  # the postgres user must reach the cluster's folder
            run(Path(tmp), size, args.churn, args.per_worker, args.timeout)
