"""The simulated WhatsApp server (a real child process) and its clients: one live connection per
device, the older replaced, every overlap recorded, garbage answered and survived; workers die
with their daemon."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import new_store
from tests.simserver import SimServerProcess, running_sim_server
from wapool.store.working_store import connect
from wapool.testing.whatsmeow_writes import WhatsmeowWriter
from wapool.whatsapp import events as ev
from wapool.whatsapp.sim_server import MAX_LINE
from wapool.whatsapp.simulated import Script, ServerLink, SimulatedBackend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sim_server(tmp_path: Path) -> Iterator[SimServerProcess]:
    with running_sim_server(tmp_path) as server:
        yield server


class Raw:
    """A bare protocol connection, line by line."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.lines = self.sock.makefile("rb")

    def send(self, payload: bytes | dict[str, Any]) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode() + b"\n"
        self.sock.sendall(data)

    def reply(self) -> dict[str, Any]:
        line = self.lines.readline()
        assert line, "the server closed the connection"
        message: dict[str, Any] = json.loads(line)
        return message

    def ask(self, payload: bytes | dict[str, Any]) -> dict[str, Any]:
        self.send(payload)
        return self.reply()

    def closed_by_server(self) -> bool:
        return self.lines.readline() == b""

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def _connect(raw: Raw, device: str, node: str, pid: int = 1) -> dict[str, Any]:
    return raw.ask({"op": "connect", "device": device, "company": "acme", "node": node, "pid": pid})


def test_a_second_connection_replaces_the_first_and_is_recorded(
    sim_server: SimServerProcess,
) -> None:
    first, second = Raw(sim_server.socket), Raw(sim_server.socket)
    one = _connect(first, "1:5@s.whatsapp.net", "node-a", 11)
    assert one["op"] == "connected"
    two = _connect(second, "1:5@s.whatsapp.net", "node-b", 22)
    assert two["op"] == "connected"
    assert first.reply() == {"op": "replaced"}
    assert first.closed_by_server()
    stats = sim_server.stats()
    [overlap] = stats["overlaps"]
    assert overlap["device"] == "1:5@s.whatsapp.net"
    assert (overlap["old"]["node"], overlap["old"]["pid"], overlap["old"]["conn"]) == (
        "node-a", 11, one["conn"],
    )  # fmt: skip
    assert (overlap["new"]["node"], overlap["new"]["pid"]) == ("node-b", 22)
    assert stats["connections"] == {"1:5@s.whatsapp.net": 2}
    assert stats["live"]["1:5@s.whatsapp.net"]["node"] == "node-b"
    first.close()
    assert sim_server.stats()["live"]["1:5@s.whatsapp.net"]["node"] == "node-b"
    second.close()
    assert sim_server.stop() == 0
    assert [r["device"] for r in sim_server.records("overlap")] == ["1:5@s.whatsapp.net"]


def test_handoffs_without_overlap_disconnect_and_eof(sim_server: SimServerProcess) -> None:
    device = "2:1@s.whatsapp.net"
    first = Raw(sim_server.socket)
    _connect(first, device, "a")
    first.send({"op": "disconnect"})
    assert first.reply() == {"op": "disconnected"}
    assert first.closed_by_server()
    second = Raw(sim_server.socket)
    _connect(second, device, "b")
    second.close()  # EOF, as a killed process leaves it
    deadline = time.monotonic() + 10
    while device in sim_server.stats()["live"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    third = Raw(sim_server.socket)
    assert _connect(third, device, "c")["op"] == "connected"
    stats = sim_server.stats()
    assert stats["overlaps"] == []
    assert stats["connections"] == {device: 3}
    assert [r["how"] for r in sim_server.records("disconnect")] == ["disconnect", "eof"]
    third.close()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"garbage\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"op": "launch"}\n', "unknown op 'launch'"),
        (b'{"op": "connect", "device": "x"}\n', "connect: field 'company' missing or not str"),
        (b'{"op": "connect", "device": "x", "company": "c", "node": "n", "pid": true}\n',
         "connect: field 'pid' missing or not int"),
        (b"\xff\xfe\n", "not JSON"),
        (b"x" * (MAX_LINE + 10) + b"\n", f"line longer than {MAX_LINE} bytes"),
    ],
)  # fmt: skip
def test_garbage_is_answered_with_an_error_and_the_connection_carries_on(
    sim_server: SimServerProcess, line: bytes, error: str
) -> None:
    raw = Raw(sim_server.socket)
    assert raw.ask(line) == {"op": "error", "message": error}
    assert _connect(raw, "3:1@s.whatsapp.net", "a")["op"] == "connected"
    assert raw.ask({"op": "connect", "device": "other", "company": "c", "node": "n", "pid": 1})[
        "message"
    ] == ("this connection already drives 3:1@s.whatsapp.net")
    assert raw.ask({"op": "stats"})["op"] == "stats"
    raw.close()


def test_sends_are_acknowledged_and_repeats_counted(sim_server: SimServerProcess) -> None:
    raw = Raw(sim_server.socket)
    _connect(raw, "4:1@s.whatsapp.net", "a")
    send = {"op": "send", "id": "m1", "to": "echo@s.whatsapp.net", "body": "hi"}
    assert raw.ask(send)["id"] == "m1"
    assert raw.ask(send)["op"] == "ack"
    stats = raw.ask({"op": "stats"})
    assert stats["sends"] == {"4:1@s.whatsapp.net": 2}
    assert [d["id"] for d in stats["duplicates"]] == ["m1"]
    raw.close()


def test_a_second_server_on_a_live_socket_refuses(sim_server: SimServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wapool.whatsapp.sim_server", str(sim_server.socket)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "already listens" in result.stderr
    assert sim_server.stats()["overlaps"] == []


def _paired_store(template: Path, state: Path, company: str) -> tuple[Path, str]:
    path = new_store(template, state, company)
    conn = connect(path)
    jid = WhatsmeowWriter(conn).pair()
    conn.close()
    return path, jid


def test_simulated_clients_hold_their_device_on_the_server(
    sim_server: SimServerProcess, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path, jid = _paired_store(whatsmeow_template, tmp_path / "one", "acme")
    twin = tmp_path / "twin.db"  # the same device, as a restored copy on another host
    twin.write_bytes(path.read_bytes())
    events: dict[str, queue.Queue[ev.WhatsAppEvent]] = {"a": queue.Queue(), "b": queue.Queue()}
    backend = {
        name: SimulatedBackend(Script(churn_per_second=20), ServerLink(sim_server.socket, name))
        for name in events
    }
    first = backend["a"].client("acme", path, events["a"].put)
    first.start()
    assert events["a"].get(timeout=10) == ev.Connected()
    assert sim_server.stats()["live"][jid]["node"] == "a"
    second = backend["b"].client("acme", twin, events["b"].put)
    second.start()
    assert events["b"].get(timeout=10) == ev.Connected()
    assert events["a"].get(timeout=10) == ev.StreamReplaced()
    assert first.stop(5)
    assert second.stop(5)
    stats = sim_server.stats()
    assert [o["old"]["node"] for o in stats["overlaps"]] == ["a"]
    assert stats["live"] == {}  # a stopped client lets its device go


def test_a_simulated_client_without_its_server_fails_to_connect(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    path, _ = _paired_store(whatsmeow_template, tmp_path, "acme")
    events: queue.Queue[ev.WhatsAppEvent] = queue.Queue()
    link = ServerLink(tmp_path / "nobody.sock", "a")
    client = SimulatedBackend(Script(), link).client("acme", path, events.put)
    client.start()
    failed = events.get(timeout=10)
    assert isinstance(failed, ev.ConnectFailed)
    assert "unreachable" in failed.reason
    assert client.stop(5)


def test_workers_die_with_their_daemon(tmp_path: Path) -> None:
    """Even while something else keeps the worker's stdin open (no EOF to notice)."""
    read_end, write_end = os.pipe()
    parent = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        worker = subprocess.Popen(
            [sys.executable, "-m", "wapool.supervisor.worker_main", "simulated"],
            stdin={read_end}, pass_fds=[{read_end}],
            env=os.environ | {{"WAPOOL_WORKER_PARENT": str(os.getpid())}},
        )
        print(f"pid={{worker.pid}}", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE,
                            pass_fds=[read_end], text=True)  # fmt: skip
    worker = 0
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # pid, and the worker's hello
        worker = int(next(line for line in lines if line.startswith("pid="))[4:])
        assert any('"type":"hello"' in line for line in lines)  # it asked for PDEATHSIG first
        assert _alive(worker)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(worker):
            assert time.monotonic() < deadline, "the worker outlived its daemon"
            time.sleep(0.05)
    finally:
        os.close(read_end)
        os.close(write_end)
        proc.kill()
        if worker and _alive(worker):
            os.kill(worker, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
