"""Inbound messages: the handler's cost, and inbound-to-webhook latency under load.

``handler``: what a client's event handler does for each message, in-process: translate a
neonize ``MessageEv`` protobuf, write it to the company's inbox (WAL, synchronous=FULL) and
queue the worker's inbox notice. Percentiles over ``--messages`` messages.

``webhook``: a throwaway cluster, a real daemon (simulated backend) with ``--companies``
companies each receiving ``--rate`` messages per second, and a local webhook receiver in a
process of its own (``webhook_receiver.py``). Latency is the receiver's arrival time minus the
message's timestamp (taken just before the simulated handler writes it to the inbox), split at
the inbox row's ``received_at``; the CPU each process used is printed beside it. Reported after
``--warmup`` seconds. ``BENCH_PROFILE=FILE`` runs the daemon under cProfile,
``BENCH_LOOP_LAG=FILE`` under ``loopprobe.py`` (the event loop's stalls and where they are).

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


class _Arrivals:
    """What the receiver process (``webhook_receiver.py``) wrote: one line per request."""

    def __init__(self, path: Path) -> None:
        self.path, self._offset = path, 0
        self.rows: list[tuple[float, float, float]] = []  # arrival, timestamp, received_at
        self.senders: set[str] = set()

    def read(self) -> None:
        with open(self.path, "rb") as file:
            file.seek(self._offset)
            data = file.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            arrival, _, body = line.partition(b" ")
            event = json.loads(body)
            if event["type"] == "message":
                self.rows.append((float(arrival), event["timestamp"], event["received_at"]))
                self.senders.add(event["company"])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cpu_groups(daemon: int, receiver: int, postmaster: int) -> dict[str, float]:
    return {
        "daemon": _cpu_seconds(daemon),
        "workers": sum(_cpu_seconds(p) for p in _children(daemon)),
        "postgres": _cpu_seconds(postmaster) + sum(_cpu_seconds(p) for p in _children(postmaster)),
        "receiver": _cpu_seconds(receiver),
        "bench": _cpu_seconds(os.getpid()),
    }


def _spread(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.1f} ms, p99 {percentile(values, 0.99):.1f} ms"


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
        out = root / "arrivals.txt"
        out.touch()
        port = free_port()
        receiver = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("webhook_receiver.py")), str(port),
             str(out)], stdout=subprocess.PIPE,
        )  # fmt: skip
        assert receiver.stdout is not None
        receiver.stdout.readline()  # "ready"
        hook = f"http://127.0.0.1:{port}/hook"
        arrivals = _Arrivals(out)
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
            lag = os.environ.get("BENCH_LOOP_LAG")  # the event loop's stalls (loopprobe.py)
            prefix = ["-m", "cProfile", "-o", profile] if profile else []
            entry = (
                [str(Path(__file__).with_name("loopprobe.py")), lag] if lag else ["-m", "wapool"]
            )
            daemon = subprocess.Popen([sys.executable, *prefix, *entry, "run"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        try:
            deadline = time.monotonic() + 600
            while len(arrivals.senders) < companies and time.monotonic() < deadline:
                await asyncio.sleep(0.5)  # every company connected and sending
                arrivals.read()
            await asyncio.sleep(warmup)
            start, before = time.time(), _cpu_groups(daemon.pid, receiver.pid, postmaster)
            await asyncio.sleep(seconds)
            end, after = time.time(), _cpu_groups(daemon.pid, receiver.pid, postmaster)
            await asyncio.sleep(1.0)
            arrivals.read()
            if lag:
                Path(lag + ".window").write_text(f"{start!r} {end!r}")
        finally:
            daemon.terminate()
            daemon.wait(60)
            receiver.terminate()
            receiver.wait(10)
        rows = [r for r in arrivals.rows if start <= r[0] < end]
        window = [(at - sent) * 1000 for at, sent, _ in rows]
        handler = [(got - sent) * 1000 for _, sent, got in rows]
        daemon_side = [(at - got) * 1000 for at, _, got in rows]
        cpu = ", ".join(f"{k} {(after[k] - before[k]) / seconds:.2f}" for k in after)
        print(
            f"inbound-to-webhook ({companies} companies x {rate:g} msg/s, {seconds:g} s window): "
            f"{len(window) / seconds:.0f} msg/s delivered, p50 {statistics.median(window):.1f} ms, "
            f"p99 {percentile(window, 0.99):.1f} ms, max {max(window):.1f} ms  ({load_average()})\n"
            f"  timestamp -> inbox row: {_spread(handler)}; inbox row -> receiver: "
            f"{_spread(daemon_side)}\n  CPU cores used: {cpu}"
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
