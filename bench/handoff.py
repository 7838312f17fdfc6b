"""How long is a company without a client when it is handed over gracefully?

A throwaway cluster and one simulated WhatsApp server; COMPANIES companies (simulated backend)
come up on daemon ``one``; then daemon ``two`` joins and gets its share through graceful
handoffs (phase "join"); then ``wapool drain two --wait`` hands them back (phase "drain").
For each company moved, the downtime is read from the server's journal: from the old client's
disconnect to the new client's connect. Printed: moves, downtime p50/p99/max, the phase's
length, and the holder's own part (stop, drain, release: ``wapool_handoff_seconds``).

    python bench/handoff.py [--companies 100] [--lease 30] [--slack 2] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from figures import percentile

from wapool.devdb import Cluster, free_port
from wapool.whatsapp.sim_link import server_stats


def _env(url: str, root: Path, name: str, socket: Path, args: argparse.Namespace) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")} | {
        "WAPOOL_DATABASE_URL": url,
        "WAPOOL_STATE_DIR": str(root / name),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_SIMULATED_SERVER": str(socket),
        "WAPOOL_NODE_NAME": name,
        "WAPOOL_LEASE_SECONDS": str(args.lease),
        "WAPOOL_CACHE_SWEEP_SECONDS": "5",
        "WAPOOL_BALANCE_SLACK": str(args.slack),
        "WAPOOL_HANDOFF_BATCH": str(args.batch),
        "WAPOOL_HTTP_ADDR": f"127.0.0.1:{free_port()}",
    }


def _until(done: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not reached in {timeout:.0f} s: {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def _holding(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT holder, count(*) FROM company_leases WHERE holder <> '' "
            "AND expires_at > now() GROUP BY holder"
        ).fetchall()
    return {str(h): int(c) for h, c in rows}


def _settled(socket: Path, url: str, companies: int, shares: dict[str, int], slack: int) -> bool:
    live = server_stats(socket)["live"]
    holding = _holding(url)
    return len(live) == companies and all(
        abs(holding.get(n, 0) - share) <= slack for n, share in shares.items()
    )


def _downtimes(journal: Path, since: float, until: float) -> list[float]:
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    down: dict[str, float] = {}
    gaps = []
    for r in sorted(records, key=lambda r: (r.get("at", 0.0), r["kind"] == "connect")):
        if r["kind"] == "disconnect" and since <= r["at"] <= until:
            down[r["company"]] = r["at"]
        elif r["kind"] == "connect" and r["company"] in down:
            gaps.append(r["at"] - down.pop(r["company"]))
    return sorted(gaps)


def _holder_seconds(port: str) -> str:
    with urllib.request.urlopen(f"http://{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = [line.split()[-1] for line in text.splitlines()
             if line.startswith("wapool_handoff_seconds{")]  # fmt: skip
    return "/".join(f"{float(v):.3f}" for v in found) or "-"


def _report(phase: str, journal: Path, began: float, ended: float, holder: str) -> None:
    gaps = _downtimes(journal, began, ended)
    print(
        f"{phase}: {len(gaps)} companies moved in {ended - began:.1f} s; downtime per company "
        f"p50 {percentile(gaps, 0.5):.2f} s, p99 {percentile(gaps, 0.99):.2f} s, "
        f"max {max(gaps, default=0.0):.2f} s; holder's part p50/p99 {holder} s"
    )


def run(root: Path, args: argparse.Namespace) -> None:
    cluster = Cluster(root / "pg", free_port(), durable=False)
    cluster.start()
    cluster.ensure_database()
    url = cluster.url()
    base = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")}
    subprocess.run([sys.executable, "-m", "wapool", "migrate"], check=True,
                   env=base | {"WAPOOL_DATABASE_URL": url}, stdout=subprocess.DEVNULL)  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        for n in range(args.companies):
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (f"c{n:04d}",))
    short = Path(tempfile.mkdtemp(prefix="wsim-"))
    socket, journal = short / "wa.sock", root / "sim.jsonl"
    server = subprocess.Popen(
        [sys.executable, "-m", "wapool.whatsapp.sim_server", str(socket), "--state", str(journal)],
        env=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    envs: dict[str, dict[str, str]] = {}
    try:
        _until(socket.exists, 30, "the simulated server listens")
        for name in ("one", "two"):
            (root / name).mkdir()
            envs[name] = _env(url, root, name, socket, args)
        with open(root / "one.log", "ab") as log:
            daemons["one"] = subprocess.Popen([sys.executable, "-m", "wapool", "run"],
                                              env=envs["one"], stderr=log)  # fmt: skip
        up = _until(lambda: _settled(socket, url, args.companies, {"one": args.companies}, 0),
                    600, "all up on one")  # fmt: skip
        print(f"{args.companies} companies up on one in {up:.1f} s")
        half = -(-args.companies // 2)
        began = time.time()
        with open(root / "two.log", "ab") as log:
            daemons["two"] = subprocess.Popen([sys.executable, "-m", "wapool", "run"],
                                              env=envs["two"], stderr=log)  # fmt: skip
        _until(lambda: _settled(socket, url, args.companies, {"one": half, "two": half},
                                args.slack), 900, "shared by two")  # fmt: skip
        _report(
            "join", journal, began, time.time(), _holder_seconds(envs["one"]["WAPOOL_HTTP_ADDR"])
        )
        began = time.time()
        subprocess.run([sys.executable, "-m", "wapool", "drain", "two", "--wait", "--timeout",
                        "900"], env=envs["two"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        _until(lambda: _settled(socket, url, args.companies, {"one": args.companies}, 0),
               300, "all back on one")  # fmt: skip
        _report(
            "drain", journal, began, time.time(), _holder_seconds(envs["two"]["WAPOOL_HTTP_ADDR"])
        )
        overlaps: list[Any] = server_stats(socket)["overlaps"]
        print(f"overlaps recorded by the simulated server: {len(overlaps)}")
    finally:
        for daemon in daemons.values():
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons.values():
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
        server.terminate()
        server.wait(10)
        shutil.rmtree(short, ignore_errors=True)
        cluster.stop("immediate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--companies", type=int, default=100)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--slack", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    arguments = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="wapool-handoff-") as tmp:
        Path(tmp).chmod(0o755)  # the postgres user must reach the cluster's folder
        run(Path(tmp), arguments)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
