"""The notify protocol against a fake NOTIFY_SOCKET: READY/STATUS/STOPPING from a real daemon,
the watchdog cadence, and silence while the event loop is blocked."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.daemon import Daemons
from wapool.observability.sdnotify import Notifier

pytestmark = pytest.mark.timeout(60)


class FakeSystemd:
    """Receives notify datagrams with their arrival times."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def fields(self) -> list[str]:
        return [field for _, message in self.messages for field in message.split("\n")]

    def pings(self) -> list[float]:
        return [at for at, message in self.messages if message == "WATCHDOG=1"]


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.close()


def _wait(predicate: object, timeout: float = 30) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_daemon_notifies_ready_status_watchdog_and_stopping(
    database_url: str, tmp_path: Path, systemd: FakeSystemd, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302')")
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "400000",
    }
    daemon = daemons.start(env)
    _wait(lambda: "READY=1" in systemd.fields())
    assert "STATUS=running 1 of 1 companies" in systemd.fields()
    first = len(systemd.pings())
    time.sleep(1.0)  # a window to count pings in; the count, not the sleep, is asserted
    during = len(systemd.pings()) - first
    assert 3 <= during <= 8, during  # every 0.2 s (half of WATCHDOG_USEC)
    assert daemon.stop(timeout=30) == 0
    assert "STOPPING=1" in systemd.fields()


def test_a_blocked_event_loop_stops_the_pings(tmp_path: Path, systemd: FakeSystemd) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_interval == pytest.approx(0.05)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(notifier.watchdog(stop))
        await asyncio.sleep(0.3)
        time.sleep(0.6)  # noqa: ASYNC251 - the point: the loop is stuck, nothing can ping
        await asyncio.sleep(0.3)
        stop.set()
        await task

    asyncio.run(scenario())
    pings = systemd.pings()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 6
    assert max(gaps) >= 0.55  # the block shows as one long silence
    assert sorted(gaps)[len(gaps) // 2] < 0.15  # otherwise every ~0.05 s


def test_abstract_socket_and_no_systemd(tmp_path: Path) -> None:
    name = f"wapool-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("STATUS=hello")
        assert receiver.recv(100) == b"STATUS=hello"
    finally:
        receiver.close()
    silent = Notifier({})
    assert not silent.enabled
    assert silent.send("READY=1") is False
    assert (
        Notifier(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
        ).watchdog_interval
        is None
    )
