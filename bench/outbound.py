"""Outbound messages: how fast the API accepts, and the end-to-end echo.

Both run a throwaway cluster, the simulated WhatsApp server and a real daemon (simulated
backend) with ``--companies`` companies; the load comes from this process (aiohttp).

``accept``: an open loop of ``POST /v1/companies/{id}/messages`` at ``--rate`` requests a second
over the companies for ``--seconds`` (after ``--warmup``); latency is the answer's arrival minus
the moment the request was due (so a stalled server is not hidden by a stalled client). The
messages are sent meanwhile at the default pacing (``--unpaced``: all of them at once).

``echo``: messages to the simulated echo contact at ``--echo-rate`` a second; latency is from
just before the POST until the contact's answer (``echo: <text>``) arrives at a webhook
receiver in this process: API -> outbox -> worker -> WhatsApp -> contact -> inbox -> webhook.
The simulated contact answers at once (``--echo-delay 0``).

``outbox``: the durable part of an accept alone, in this process: ``Outbox.accept`` (group
commit, ``synchronous=FULL``) at ``--rate`` a second, without HTTP.

    python bench/outbound.py [outbox|accept|echo|all] [--companies 10] [--rate 500]
                             [--seconds 20] [--unpaced]
"""

# A script: blocking setup and teardown inside the coroutine are fine.

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import ClientSession, TCPConnector, web
from figures import load_average, percentile

from wapool.devdb import Cluster, free_port

TOKEN = "bench-token-0123456789abcdef"
ECHO = "10000000000@s.whatsapp.net"


def _summary(name: str, ms: list[float], extra: str = "") -> str:
    return (f"{name}: n={len(ms)} p50 {statistics.median(ms):.1f} ms  p95 {percentile(ms, 0.95):.1f} ms"
            f"  p99 {percentile(ms, 0.99):.1f} ms  max {max(ms):.1f} ms{extra}  ({load_average()})")  # fmt: skip


class Setup:
    """Cluster, simulated server and daemon; ``port`` is the daemon's HTTP port."""

    def __init__(self, root: Path, companies: int, hook: str | None, unpaced: bool) -> None:
        self.unpaced = unpaced
        self.root = root
        self.companies = [f"c{n:03d}" for n in range(companies)]
        self.hook = hook
        self.port = free_port()
        self.short = Path(tempfile.mkdtemp(prefix="wbench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.cluster = Cluster(root / "pg", free_port(), durable=False)

    def start(self) -> None:
        self.cluster.start()
        self.cluster.ensure_database()
        url = self.cluster.url()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")}
        subprocess.run([sys.executable, "-m", "wapool", "migrate"], check=True,
                       env=clean | {"WAPOOL_DATABASE_URL": url}, stdout=subprocess.DEVNULL)  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            for company in self.companies:
                conn.execute("INSERT INTO companies (id) VALUES (%s)", (company,))
        sock = self.short / "wa.sock"
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "wapool.whatsapp.sim_server", str(sock), "--echo-delay", "0"],
            env=clean, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        env = clean | {
            "WAPOOL_DATABASE_URL": url, "WAPOOL_STATE_DIR": str(self.root / "state"),
            "WAPOOL_WHATSAPP_BACKEND": "simulated", "WAPOOL_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "WAPOOL_SIMULATED_SERVER": str(sock), "WAPOOL_SIMULATED_CHURN_PER_SECOND": "0.2",
            "WAPOOL_API_TOKENS": TOKEN, "WAPOOL_MAX_CONCURRENT_CONNECTS": "100",
        }  # fmt: skip
        if self.unpaced:
            env |= {"WAPOOL_SEND_PER_MINUTE": "6000", "WAPOOL_SEND_BURST": "100",
                    "WAPOOL_SEND_GLOBAL_PER_SECOND": "2000"}  # fmt: skip
        if self.hook:
            env |= {"WAPOOL_WEBHOOK_URL": self.hook, "WAPOOL_WEBHOOK_SECRET": "bench-secret"}
        with open(self.root / "daemon.log", "ab") as log:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "wapool", "run"], env=env,
                                               stdout=subprocess.DEVNULL, stderr=log))  # fmt: skip
        deadline = time.monotonic() + 120
        while set(self._accepting()) != set(self.companies):
            if time.monotonic() > deadline:
                raise SystemExit("the daemon did not start accepting in 120 s")
            time.sleep(0.3)

    def _accepting(self) -> list[str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=5) as r:
                return list(json.load(r)["outbound"]["accepting"])
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.cluster.stop("immediate")
        shutil.rmtree(self.short, ignore_errors=True)


async def _post(session: ClientSession, port: int, company: str, body: dict[str, Any]) -> int:
    async with session.post(f"http://127.0.0.1:{port}/v1/companies/{company}/messages",
                            json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as response:  # fmt: skip
        await response.read()
        return response.status


async def accept(
    root: Path, companies: int, rate: float, seconds: float, warmup: float, unpaced: bool
) -> None:
    setup = Setup(root, companies, None, unpaced)
    setup.start()
    try:
        latencies: list[tuple[float, float]] = []
        lags: list[tuple[float, float]] = []
        failures = 0
        async with ClientSession(connector=TCPConnector(limit=256)) as session:

            async def one(n: int, due: float) -> None:
                nonlocal failures
                lags.append((due, (time.perf_counter() - due) * 1000))  # the client's own delay
                company = setup.companies[n % len(setup.companies)]
                body = {"to": ECHO, "text": f"bench {n}", "idempotency_key": f"k{n}"}
                status = await _post(session, setup.port, company, body)
                if status != 202:
                    failures += 1
                latencies.append((due, (time.perf_counter() - due) * 1000))

            loop_start = time.perf_counter()
            tasks = []
            total = int(rate * (seconds + warmup))
            for n in range(total):
                due = loop_start + n / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(one(n, due)))
            await asyncio.gather(*tasks)
        window = [ms for due, ms in latencies if due >= loop_start + warmup]
        lag = [ms for due, ms in lags if due >= loop_start + warmup]
        pacing = "unpaced sends" if unpaced else "default pacing"
        print(_summary(f"API accept at {rate:g} req/s over {companies} companies ({pacing}), "
                       f"{seconds:g} s", window, f", non-202: {failures}, of which the load "
                       f"generator's own lag p99 {percentile(lag, 0.99):.1f} ms"))  # fmt: skip
    finally:
        setup.stop()


async def echo(root: Path, companies: int, rate: float, seconds: float) -> None:
    arrived: dict[str, float] = {}

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if body.get("type") == "message" and str(body.get("text", "")).startswith("echo: "):
            arrived.setdefault(body["text"][6:], time.perf_counter())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    setup = Setup(root, companies, f"http://127.0.0.1:{hook_port}/hook", True)
    setup.start()
    try:
        sent: dict[str, float] = {}
        async with ClientSession() as session:
            start = time.perf_counter()
            for n in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
                text = f"ping {n}"
                sent[text] = time.perf_counter()
                asyncio.get_running_loop().create_task(
                    _post(session, setup.port, setup.companies[n % companies], {"to": ECHO, "text": text}))  # fmt: skip
            deadline = time.perf_counter() + 30
            while len(arrived) < len(sent) and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
        ms = [(arrived[t] - at) * 1000 for t, at in sent.items() if t in arrived]
        print(_summary(f"end-to-end echo (API -> contact -> webhook) at {rate:g} msg/s over "
                       f"{companies} companies", ms, f", lost {len(sent) - len(ms)}"))  # fmt: skip
    finally:
        setup.stop()
        await runner.cleanup()


async def outbox(root: Path, rate: float, seconds: float) -> None:
    from wapool.messaging.outbound import Outbound
    from wapool.messaging.outbox import Outbox

    root.mkdir(parents=True, exist_ok=True)
    box = Outbox(root / "outbox.db")
    latencies: list[float] = []

    async def one(n: int, due: float) -> None:
        await box.accept(Outbound(f"c{n % 10}", ECHO, f"text {n}", idempotency_key=f"k{n}"))
        latencies.append((time.perf_counter() - due) * 1000)

    start = time.perf_counter()
    tasks = []
    for n in range(int(rate * seconds)):
        due = start + n / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(n, due)))
    await asyncio.gather(*tasks)
    box.close()
    print(_summary(f"outbox accept (no HTTP) at {rate:g}/s", latencies,
                   f", {len(latencies) / box.commits:.1f} accepts per commit"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", choices=("outbox", "accept", "echo", "all"),
                        default="all")  # fmt: skip
    parser.add_argument("--companies", type=int, default=10)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--echo-rate", type=float, default=20.0)
    parser.add_argument(
        "--unpaced",
        action="store_true",
        help="accept: raise the pacing so every accepted message is sent at once",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="wapool-bench-out-"))
    root.chmod(0o755)  # the postgres user must reach the cluster's folder
    try:
        if args.what in ("outbox", "all"):
            asyncio.run(outbox(root / "o", args.rate, args.seconds))
        if args.what in ("accept", "all"):
            asyncio.run(accept(root / "a", args.companies, args.rate, args.seconds, args.warmup,
                               args.unpaced))  # fmt: skip
        if args.what in ("echo", "all"):
            asyncio.run(echo(root / "e", args.companies, args.echo_rate, args.seconds))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
