"""How long are a dead host's companies without a client? Two real daemons, one SIGKILL.

A throwaway cluster, COMPANIES companies (simulated backend) brought up by daemon ``one``;
daemon ``two`` joins on its own state directory, as on a second host, and gets its fair share
(half) through graceful handoffs. Then ``one`` is killed with SIGKILL; the figures are the time
until ``two`` takes its first lease of ``one``'s companies, holds every lease (it takes them in
batches it can bring up) and until every company is connected again under it. Lease length and
reconcile interval are wapool's defaults unless given.

    python bench/takeover.py [--companies 20] [--lease 30] [--sweep 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from figures import load_average

from wapool.devdb import Cluster, free_port


def _daemon(
    url: str, state: Path, name: str, lease: float, sweep: float
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")} | {
        "WAPOOL_DATABASE_URL": url,
        "WAPOOL_STATE_DIR": str(state),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_NODE_NAME": name,
        "WAPOOL_LEASE_SECONDS": str(lease),
        "WAPOOL_CACHE_SWEEP_SECONDS": str(sweep),
        "WAPOOL_HTTP_ADDR": "127.0.0.1:0",
    }
    with open(state.parent / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "wapool", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip


def _count(url: str, sql: str, holder: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, (holder,)).fetchone()
    return int(row[0]) if row else 0


def _until(done: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise TimeoutError("not reached in time")
        time.sleep(0.1)
    return time.monotonic() - started


LEASES = "SELECT count(*) FROM company_leases WHERE holder = %s AND expires_at > now()"
CONNECTED = "SELECT count(*) FROM session_states WHERE holder = %s AND state = 'connected'"


def run(root: Path, companies: int, lease: float, sweep: float) -> None:
    cluster = Cluster(root / "pg", free_port(), durable=False)
    cluster.start()
    cluster.ensure_database()
    url = cluster.url()
    subprocess.run([sys.executable, "-m", "wapool", "migrate"], check=True,
                   env=os.environ | {"WAPOOL_DATABASE_URL": url}, stdout=subprocess.DEVNULL)  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        for n in range(companies):
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (f"c{n:04d}",))
    daemons = []
    try:
        for name in ("one", "two"):
            (root / name).mkdir()
            daemons.append(_daemon(url, root / name, name, lease, sweep))
            if name == "one":
                _until(lambda: _count(url, CONNECTED, "one") == companies, 120)
        half = companies // 2
        _until(lambda: _count(url, CONNECTED, "two") >= half - 2, 600)  # its fair share
        time.sleep(lease / 3 + 1)
        before = _count(url, LEASES, "two")
        daemons[0].send_signal(signal.SIGKILL)
        first = _until(lambda: _count(url, LEASES, "two") > before, lease + sweep + 120)
        leases = first + _until(lambda: _count(url, LEASES, "two") == companies, 120)
        connected = leases + _until(lambda: _count(url, CONNECTED, "two") == companies, 120)
        print(f"{companies} companies, lease {lease:g} s, reconcile every {sweep:g} s, "
              f"{companies - before} on the killed daemon; after the SIGKILL: first of them "
              f"taken {first:.1f} s, all {leases:.1f} s, "
              f"all connected again {connected:.1f} s; {load_average()}")  # fmt: skip
    finally:
        for daemon in daemons:
            daemon.kill()
            daemon.wait(30)
        cluster.stop("immediate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--companies", type=int, default=20)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--sweep", type=float, default=60.0)
    parser.add_argument("--keep", type=Path, help="run in this new folder and keep the logs")
    args = parser.parse_args()
    print(f"before: {load_average()}")
    if args.keep is not None:
        args.keep.mkdir(mode=0o755, parents=True)
        run(args.keep, args.companies, args.lease, args.sweep)
        raise SystemExit(0)
    with tempfile.TemporaryDirectory(prefix="wapool-takeover-") as tmp:
        Path(tmp).chmod(0o755)  # the postgres user must reach the cluster's folder
        run(Path(tmp), args.companies, args.lease, args.sweep)
