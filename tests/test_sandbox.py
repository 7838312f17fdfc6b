"""The daemon under the seccomp rules its unit makes systemd install.

systemd is not PID 1 here, so ``tests/sandbox_exec.py`` rebuilds from ``systemd/wapool.service``
the filters systemd 252 loads for ``SystemCallFilter=``, ``MemoryDenyWriteExecute=`` and
``RestrictAddressFamilies=``, and runs the unit's ExecStart= under them; everything the daemon
starts (workers, neonize's Go runtime, ctypes callbacks from Go into Python) inherits them.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.daemon import Daemon, Daemons
from tests.sandbox_exec import UNISTD, exec_start

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "wapool.service"
SANDBOX = [sys.executable, str(ROOT / "tests" / "sandbox_exec.py"), str(UNIT)]

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter is written for x86-64"),
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing"),
    pytest.mark.skipif(not UNISTD.exists(), reason=f"{UNISTD} missing (linux-libc-dev)"),
]

PROBE = """
import ctypes, mmap, os, socket
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("wx-allowed")
except PermissionError:
    print("wx-refused")
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    print("netlink-allowed")
except OSError:
    print("netlink-refused")
for name, call in (("setuid", lambda: os.setuid(0)),
                   ("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 1))):
    try:
        call()
        print(f"{name}-allowed")
    except PermissionError:
        print(f"{name}-refused")
libc = ctypes.CDLL(None)
compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
numbers = (ctypes.c_int * 4)(3, 1, 4, 2)
libc.qsort(numbers, 4, ctypes.sizeof(ctypes.c_int), compare(lambda a, b: a[0] - b[0]))
print("callback", list(numbers))
"""


def test_the_unit_denies_what_the_daemon_does_not_need() -> None:
    text = UNIT.read_text()
    assert "MemoryDenyWriteExecute=yes" in text
    assert "SystemCallFilter=~@privileged @resources" in text
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in text


def test_the_filter_bites_and_ctypes_callbacks_still_work() -> None:
    result = subprocess.run([*SANDBOX, sys.executable, "-c", PROBE], capture_output=True,
                            text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "wx-refused", "netlink-refused", "setuid-refused", "setpriority-refused",
        "callback [1, 2, 3, 4]",
    ]  # fmt: skip


def _status(daemon: Daemon) -> dict[str, object]:
    code, body = daemon.get("/status")
    return dict(json.loads(body)) if code == 200 else {}


def test_daemon_with_real_neonize_clients_runs_under_the_filter(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    """The unit's ExecStart= (migrate, then the daemon) under the unit's filters: Go runtime in
    the workers, schema creation through neonize, a real connect attempt (which fails at DNS:
    no internet here) reported back through ctypes callbacks, a clean stop."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302')")
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "neonize",
    }
    daemon = daemons.start(env, command=[*SANDBOX, *exec_start(UNIT)])
    deadline = time.monotonic() + 60
    company: dict[str, object] = {}
    while not str(company.get("last_error") or "").count("web.whatsapp.com"):
        assert daemon.returncode is None, daemon.text()
        assert time.monotonic() < deadline, (company, daemon.text())
        time.sleep(0.2)
        companies = _status(daemon).get("companies") or {}
        assert isinstance(companies, dict)
        company = companies.get("962302") or {}
    assert company["state"] == "reconnecting"
    assert (tmp_path / "state" / "962302" / "store.db").exists()
    assert daemon.stop(timeout=45) == 0, daemon.text()
    text = daemon.stdout() + daemon.text()
    assert "Operation not permitted" not in text
    assert "task_failed" not in text
