"""The simulated WhatsApp server as tests run it: a real child process on a short socket path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wapool.whatsapp.sim_link import server_stats


class SimServerProcess:
    def __init__(self, socket_path: Path, journal: Path, process: subprocess.Popen[bytes]):
        self.socket = socket_path
        self.journal = journal
        self.process = process

    def stats(self) -> dict[str, Any]:
        return server_stats(self.socket)

    def records(self, kind: str) -> list[dict[str, Any]]:
        """Journal entries of one kind (readable during the run and after the stop)."""
        lines = self.journal.read_text().splitlines() if self.journal.exists() else []
        return [r for r in map(json.loads, lines) if r["kind"] == kind]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)


def _wait_connectable(path: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the simulated WhatsApp server exited"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
    raise AssertionError("the simulated WhatsApp server did not come up")


@contextmanager
def running_sim_server(journal_dir: Path) -> Iterator[SimServerProcess]:
    """Start ``python -m wapool.whatsapp.sim_server`` (Unix socket paths are short: not under
    pytest's deep temporary folders) and stop it afterwards."""
    short = Path(tempfile.mkdtemp(prefix="wsim-"))
    path, journal = short / "wa.sock", journal_dir / "sim-server.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")}
    with open(journal_dir / "sim-server.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wapool.whatsapp.sim_server", str(path), "--state", str(journal)],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    server = SimServerProcess(path, journal, process)
    try:
        _wait_connectable(path, process, 20)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        shutil.rmtree(short, ignore_errors=True)
