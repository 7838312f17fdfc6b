"""The unit's ExecStart= as systemd runs it: what the main process exits with, who notifies.

systemd applies RestartPreventExitStatus= to the main process's status only, and with
NotifyAccess=main accepts READY=1 only from the main PID; both are checked here by running
the unit's own command line (pointed at this checkout's wapool; there is no ExecStartPre=).
"""

from __future__ import annotations

import array
import socket
import struct
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.daemon import Daemons, scrubbed_env
from tests.sandbox_exec import exec_start
from wapool.db.migrations import latest_version

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "wapool.service"

pytestmark = pytest.mark.timeout(90)


def _prevented() -> set[int]:
    line = next(
        x for x in UNIT.read_text().splitlines() if x.startswith("RestartPreventExitStatus=")
    )
    return {int(code) for code in line.split("=", 1)[1].split()}


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return scrubbed_env({"WAPOOL_STATE_DIR": str(tmp_path / "state"), **settings})


def test_bad_configuration_is_the_main_process_status(tmp_path: Path) -> None:
    env = _env(tmp_path, WAPOOL_DATABASE_URL="postgresql://x@127.0.0.1:1/x",
               WAPOOL_CACHE_TTL_SECONDS="soon")  # fmt: skip
    result = subprocess.run(exec_start(UNIT), env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert 78 in _prevented()


def test_a_newer_schema_is_the_main_process_status(database_url: str, tmp_path: Path) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO wapool_migrations (version, name, sha256) VALUES (999, 'x', 'x')")
    result = subprocess.run(exec_start(UNIT), env=_env(tmp_path, WAPOOL_DATABASE_URL=database_url),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert result.returncode == 65, result.stderr
    assert 65 in _prevented()


def _receive_with_sender(sock: socket.socket) -> tuple[int, str]:
    """One datagram and the PID the kernel vouches for (SCM_CREDENTIALS)."""
    creds = struct.calcsize("3i")
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(creds))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return array.array("i", payload[:creds])[0], data.decode()
    raise AssertionError("no credentials")


def test_migrates_then_the_daemon_notifies_from_the_main_pid(
    empty_database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notify.settimeout(60)
    env = _env(tmp_path, WAPOOL_DATABASE_URL=empty_database_url,
               WAPOOL_WHATSAPP_BACKEND="simulated",
               NOTIFY_SOCKET=str(tmp_path / "notify.sock"))  # fmt: skip
    daemon = daemons.start(env, command=exec_start(UNIT))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline
            sender, message = _receive_with_sender(notify)
            if "READY=1" in message.split("\n"):
                break
        assert sender == daemon.pid  # the shell exec'd the daemon: NotifyAccess=main accepts it
        assert daemon.stop(timeout=45) == 0
        with psycopg.connect(empty_database_url) as conn:  # migrated by the same command
            assert conn.execute("SELECT max(version) FROM wapool_migrations").fetchone() == (
                latest_version(),
            )
    finally:
        notify.close()
