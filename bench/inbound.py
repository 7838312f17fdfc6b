"""Inbound messages: the handler's cost, and inbound-to-webhook latency under load.

``handler``: what a client's event handler does for each message, in-process: translate a
neonize ``MessageEv`` protobuf, write it to the company's inbox (WAL, synchronous=FULL) and
queue the worker's inbox notice. Percentiles over ``--messages`` messages.

``webhook``: a throwaway cluster, a real daemon (simulated backend) with ``--companies``
companies each receiving ``--rate`` messages per second, and a local aiohttp webhook receiver
in this process. Latency is the receiver's arrival time minus the message's timestamp (taken
just before the simulated handler writes it to the inbox). Reported after ``--warmup`` seconds.

    python bench/inbound.py handler [--messages 5000]
    python bench/inbound.py webhook [--companies 100] [--rate 10] [--seconds 30]
"""

# A script: blocking setup and teardown inside the coroutine are fine.
# ruff: noqa: ASYNC220, ASYNC221, ASYNC230

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from figures import load_average, percentile

from wapool.devdb import Cluster, free_port


def handler(root: Path, messages: int) -> None:
    from neonize.events import MessageEv
    from neonize.proto import Neonize_pb2 as N
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

    from wapool.messaging.inbox import InboxWriter
    from wapool.supervisor.worker_main import Worker
    from wapool.whatsapp.neonize_events import translate_message

    worker = Worker(backend=None, out=io.BytesIO())  # type: ignore[arg-type]
    (root / "acme").mkdir()
    worker._inboxes["acme"] = InboxWriter(root / "acme" / "inbox.db")
    chat = N.JID(User="5511999", Server="s.whatsapp.net")
    timings = []
    for n in range(messages):
        event = MessageEv(
            Info=N.MessageInfo(
                MessageSource=N.MessageSource(Chat=chat, Sender=chat), ID=f"3EB0{n:010d}",
                Pushname="Ana", Timestamp=int(time.time() * 1000),
            ),
            Message=E.Message(conversation=f"hello {n} " + "x" * 100),
        )  # fmt: skip
        started = time.perf_counter()
        worker.record("acme", translate_message("acme", event))
        timings.append((time.perf_counter() - started) * 1000)
    print(
        f"inbound handler ({messages} messages, translate + inbox write synchronous=FULL + "
        f"notice): p50 {statistics.median(timings):.3f} ms  p99 {percentile(timings, 0.99):.3f} ms  "
        f"max {max(timings):.3f} ms  ({load_average()})"
    )


async def _receive(arrivals: list[tuple[float, float]], senders: set[str]) -> tuple[object, str]:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if body["type"] == "message":
            arrivals.append((time.time(), time.time() - body["timestamp"]))
            senders.add(body["company"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


def _provision(state: Path, companies: int) -> None:
    """Working stores made up front from one neonize-made schema (as the tests do), so the
    daemon starts every client at once instead of creating a store every two seconds."""
    import shutil

    from wapool.store.capture import install_capture
    from wapool.store.working_store import connect, prepare_dir
    from wapool.whatsapp.neonize_store import create_schema

    template = state.parent / "template.db"
    create_schema([template])
    for n in range(companies):
        path = prepare_dir(state, f"c{n:04d}")
        shutil.copyfile(template, path)
        conn = connect(path)
        install_capture(conn)
        conn.close()


async def webhook(
    root: Path, companies: int, rate: float, seconds: float, warmup: float, in_flight: int
) -> None:
    cluster = Cluster(root / "pg", free_port(), durable=False)
    cluster.start()
    try:
        cluster.ensure_database()
        url = cluster.url()
        subprocess.run([sys.executable, "-m", "wapool", "migrate"], check=True,
                       env=os.environ | {"WAPOOL_DATABASE_URL": url}, stdout=subprocess.DEVNULL)  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            for n in range(companies):
                conn.execute("INSERT INTO companies (id) VALUES (%s)", (f"c{n:04d}",))
        _provision(root / "state", companies)
        arrivals: list[tuple[float, float]] = []
        senders: set[str] = set()
        runner, hook = await _receive(arrivals, senders)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")} | {
            "WAPOOL_DATABASE_URL": url, "WAPOOL_STATE_DIR": str(root / "state"),
            "WAPOOL_WHATSAPP_BACKEND": "simulated", "WAPOOL_HTTP_ADDR": "127.0.0.1:0",
            "WAPOOL_SIMULATED_CHURN_PER_SECOND": "0.2",
            "WAPOOL_SIMULATED_INBOUND_PER_SECOND": str(rate),
            "WAPOOL_MAX_CONCURRENT_CONNECTS": "100",
            "WAPOOL_WEBHOOK_URL": hook, "WAPOOL_WEBHOOK_SECRET": "bench",
            "WAPOOL_WEBHOOK_MAX_IN_FLIGHT": str(in_flight),
        }  # fmt: skip
        with open(Path(tempfile.gettempdir()) / "wapool-bench-inbound.log", "wb") as log:
            profile = os.environ.get("BENCH_PROFILE")  # cProfile output of the daemon
            prefix = ["-m", "cProfile", "-o", profile] if profile else []
            daemon = subprocess.Popen([sys.executable, *prefix, "-m", "wapool", "run"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while len(senders) < companies and time.monotonic() < deadline:
                await asyncio.sleep(0.5)  # every company connected and sending
            await asyncio.sleep(warmup)
            start = time.time()
            await asyncio.sleep(seconds)
            end = time.time()
            window = [lat * 1000 for at, lat in arrivals if start <= at < end]
        finally:
            daemon.terminate()
            daemon.wait(60)
            await runner.cleanup()  # type: ignore[attr-defined]
        print(
            f"inbound-to-webhook ({companies} companies x {rate:g} msg/s, {seconds:g} s window): "
            f"{len(window) / seconds:.0f} msg/s delivered, p50 {statistics.median(window):.1f} ms, "
            f"p99 {percentile(window, 0.99):.1f} ms, max {max(window):.1f} ms  ({load_average()})"
        )
    finally:
        cluster.stop("immediate")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("handler")
    one.add_argument("--messages", type=int, default=5000)
    two = sub.add_parser("webhook")
    two.add_argument("--companies", type=int, default=100)
    two.add_argument("--rate", type=float, default=10.0)
    two.add_argument("--seconds", type=float, default=30.0)
    two.add_argument("--warmup", type=float, default=5.0)
    two.add_argument("--in-flight", type=int, default=64, help="WAPOOL_WEBHOOK_MAX_IN_FLIGHT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wapool-bench-") as tmp:
        Path(tmp).chmod(0o755)  # the postgres user must reach the cluster's folder
        if args.what == "handler":
            handler(Path(tmp), args.messages)
        else:
            asyncio.run(
                webhook(
                    Path(tmp), args.companies, args.rate, args.seconds, args.warmup, args.in_flight
                )
            )


if __name__ == "__main__":
    main()
