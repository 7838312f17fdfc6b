"""Worker processes for real: the protocol, garbage in both directions, a real neonize Go panic
that takes down one shard only, and a hung worker killed on missed heartbeats."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import new_store
from wapool.supervisor import protocol
from wapool.supervisor.reconciler import Supervisor
from wapool.supervisor.session import State
from wapool.supervisor.workers import WorkerHandle, WorkerPool
from wapool.whatsapp import events as ev

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"v": 9, "type": "start"}\n', "unsupported protocol version"),
        (b'{"v": 1, "type": "format_disk"}\n', "unknown message type"),
        (b'{"v": 1, "type": "start", "company": "x"}\n', "field 'store' missing"),
        (b'{"v": 1, "type": "heartbeat", "fds": true}\n', "field 'fds' missing or not int"),
        (b"\xff\xfe\n", "not JSON"),
        (b"x" * (protocol.MAX_LINE + 1), "longer than"),
        (b'{"v": 1, "type": "inbox", "company": "a", "seq": "7", "messages": 1}\n', "'seq'"),
        (b'{"v": 1, "type": "inbox", "company": "a", "seq": -1, "messages": 1}\n', "negative"),
        (b'{"v": 1, "type": "inbox", "company": "a", "seq": 3}\n', "'messages' missing"),
    ],
)
def test_malformed_messages_are_rejected(line: bytes, error: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=error):
        protocol.decode(line)


def test_events_round_trip() -> None:
    for event in (ev.Paired("1:2@s.whatsapp.net"), ev.TemporaryBan("101", 60), ev.Connected()):
        kind, fields = protocol.decode(protocol.encode_event("962302", event))
        assert kind == "event"
        assert protocol.decode_event(fields) == event
    with pytest.raises(protocol.ProtocolError, match="unknown event"):
        protocol.decode_event({"event": "Explode", "fields": {}})
    with pytest.raises(protocol.ProtocolError, match="bad fields"):
        protocol.decode_event({"event": "Paired", "fields": {"nope": 1}})


def test_worker_survives_garbage_on_its_stdin(whatsmeow_template: Path, tmp_path: Path) -> None:
    store = new_store(whatsmeow_template, tmp_path, "962302")
    commands = b"".join(
        [
            b"garbage\n",
            b'{"v": 1, "type": "rm -rf"}\n',
            protocol.encode("start", company="962302", store=str(store)),
            protocol.encode("shutdown"),
        ]
    )
    result = subprocess.run(
        [sys.executable, "-m", "wapool.supervisor.worker_main", "simulated"],
        input=commands, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kinds = [protocol.decode(line)[0] for line in result.stdout.splitlines(keepends=True)]
    assert kinds[0] == "hello"
    assert "event" in kinds
    assert "stopped" in kinds
    assert result.stderr.count(b"event=bad_command") == 2


def test_a_start_that_fails_is_reported_as_a_failed_connect(tmp_path: Path) -> None:
    """The session waits on its connect (a slot of the connect gate): a start that raises must
    settle it, naming the company, so the supervisor retries it."""
    store = tmp_path / "no such folder" / "store.db"  # its inbox cannot be opened
    commands = protocol.encode("start", company="a", store=str(store)) + protocol.encode("shutdown")
    result = subprocess.run(
        [sys.executable, "-m", "wapool.supervisor.worker_main", "simulated"],
        input=commands, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    messages = [protocol.decode(line) for line in result.stdout.splitlines(keepends=True)]
    errors = [fields for kind, fields in messages if kind == "error"]
    assert [e["company"] for e in errors] == ["a"]
    events = [protocol.decode_event(f) for kind, f in messages if kind == "event"]
    assert [type(e) for e in events] == [ev.ConnectFailed]


async def test_an_error_message_from_a_worker_is_logged_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its ``message`` field once clashed with the log record's and ended the reader."""
    events: list[tuple[str, ev.WhatsAppEvent]] = []
    pool = WorkerPool("simulated", 2, lambda c, e: events.append((c, e)), lambda c, r: None)
    error = json.dumps({"v": 1, "type": "error", "company": "a", "message": "database is locked"})
    event = json.dumps({"v": 1, "type": "event", "company": "a", "event": "Connected",
                        "fields": {}})  # fmt: skip
    script = f"print({error!r}, flush=True)\nprint({event!r}, flush=True)\nimport time\n" + (
        "time.sleep(30)"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    worker = WorkerHandle(0, process, companies={"a": Path("x")})
    pool._workers[0] = worker
    worker.reader = asyncio.create_task(pool._read(worker))
    try:
        for _ in range(200):
            if events:
                break
            await asyncio.sleep(0.05)
        assert events == [("a", ev.Connected())]
        warned = [r for r in caplog.records if r.getMessage() == "worker_error"]
        assert [r.__dict__["error"] for r in warned] == ["database is locked"]
    finally:
        process.kill()
        await process.wait()
        await worker.reader


async def test_main_process_survives_garbage_from_a_worker() -> None:
    events: list[tuple[str, ev.WhatsAppEvent]] = []
    pool = WorkerPool("simulated", 2, lambda c, e: events.append((c, e)), lambda c, r: None)
    script = "\n".join(
        [
            "import sys",
            "print('this is not the protocol', flush=True)",
            "print("
            + repr(
                json.dumps({"v": 1, "type": "event", "company": "a", "event": "Nope", "fields": {}})
            )
            + ", flush=True)",
            "print("
            + repr(
                json.dumps(
                    {"v": 1, "type": "event", "company": "a", "event": "Connected", "fields": {}}
                )
            )
            + ", flush=True)",
        ]
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    worker = WorkerHandle(0, process, companies={"a": Path("/nonexistent")})
    pool._workers[0] = worker
    await pool._read(worker)
    assert events == [("a", ev.Connected())]
    assert pool.rejected_messages == 2


async def _until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_real_go_panic_restarts_only_its_shard(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    stores = {c: new_store(whatsmeow_template, tmp_path, c) for c in ("a", "b", "c")}
    sup = Supervisor("neonize", 2, stores.__getitem__, connect_limit=8)
    stop = asyncio.Event()
    sup.want(stores)
    runner = asyncio.create_task(sup.run(stop))
    try:
        # No internet: every real client fails at its DNS lookup and waits to reconnect.
        await _until(lambda: all(s.reconnects >= 1 for s in sup.sessions.values()))
        assert len(sup.pool.workers) == 2
        # Shards of two: one worker hosts two companies, the other one (which one depends on
        # start order); crash the lonely one.
        lonely = next(w for w in sup.pool.workers if len(w.companies) == 1)
        crowded = next(w for w in sup.pool.workers if len(w.companies) == 2)
        (victim,) = lonely.companies
        survivor = next(iter(crowded.companies))
        survivor_pid = crowded.pid
        await sup.pool.command(victim, "drill_crash", store=str(stores[victim]))
        await _until(lambda: sup.pool.restarts == 1)
        assert "worker exited with status -6" in (sup.sessions[victim].last_error or "")
        # Restarted within seconds, on a new worker; the other shard never noticed.
        await _until(lambda: sup.pool.worker_of(victim) not in (None, lonely), timeout=10)
        assert sup.pool.restarts == 1
        assert crowded.pid == survivor_pid
        assert crowded.process.returncode is None
        assert sup.sessions[survivor].state is not State.FAILED
    finally:
        stop.set()
        await runner
        await sup.close()


async def test_hung_worker_is_killed_and_its_companies_restarted(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    store = new_store(whatsmeow_template, tmp_path, "962302")
    sup = Supervisor("simulated", 5, lambda _c: store, heartbeat_timeout=2.0)
    stop = asyncio.Event()
    sup.want(["962302"])
    runner = asyncio.create_task(sup.run(stop))
    try:
        await _until(lambda: sup.sessions["962302"].state is State.CONNECTED)
        worker = sup.pool.worker_of("962302")
        assert worker is not None
        os.kill(worker.pid, signal.SIGSTOP)  # alive, but answers nothing
        await _until(lambda: sup.pool.restarts == 1, timeout=15)
        assert "no heartbeat" in (sup.sessions["962302"].last_error or "")
        await _until(lambda: sup.sessions["962302"].state is State.CONNECTED, timeout=15)
        assert sup.pool.worker_of("962302") is not worker
    finally:
        stop.set()
        await runner
        await sup.close()


async def test_worker_past_its_descriptor_bound_is_recycled(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    store = new_store(whatsmeow_template, tmp_path, "962302")
    crashes: list[tuple[str, str]] = []
    pool = WorkerPool("simulated", 5, lambda c, e: None, lambda c, r: crashes.append((c, r)))
    try:
        await pool.start_company("962302", store)
        (worker,) = pool.workers
        await _until(lambda: worker.fds > 0)  # reported by its heartbeats (/proc/self/fd)
        pool._max_fds = worker.fds - 1  # as if neonize had leaked one descriptor too many
        await pool.check()
        await _until(lambda: bool(crashes))
        assert crashes[0][0] == "962302"
        assert "open descriptors" in crashes[0][1]
        assert pool.restarts == 1
        assert pool.workers == []
    finally:
        await pool.close()


async def test_a_stop_is_confirmed_by_the_worker_or_by_its_death(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    """What a handoff waits for before it releases a lease: the client is gone."""
    stores = {c: new_store(whatsmeow_template, tmp_path, c) for c in ("a", "b")}
    sup = Supervisor("simulated", 5, lambda c: stores[c])
    stop = asyncio.Event()
    sup.want(["a", "b"])
    runner = asyncio.create_task(sup.run(stop))
    try:
        await _until(lambda: all(s.state is State.CONNECTED for s in sup.sessions.values()))
        assert await sup.pool.stopped("a", 0.1)  # nothing asked: nothing to wait for
        worker = sup.pool.worker_of("a")
        assert worker is not None
        await sup.stop("a")
        assert await sup.pool.stopped("a", 15)
        os.kill(worker.pid, signal.SIGSTOP)  # the next stop is never answered...
        await sup.stop("b")
        assert not await sup.pool.stopped("b", 0.5)
        os.kill(worker.pid, signal.SIGKILL)  # ...until the worker dies: the client is gone
        assert await sup.pool.stopped("b", 15)
    finally:
        stop.set()
        await runner
        await sup.close()
