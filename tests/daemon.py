"""A daemon in a child process, as tests drive it: started with an environment scrubbed of
``WAPOOL_*``, its stderr in a log file read as it grows, HTTP on a port of its own, and a
teardown that always ends it within a bound.

The ``daemon`` fixture in ``conftest.py`` hands out a starter; every daemon it started is ended
when the test ends, whatever happened. The command defaults to ``python -m wapool run``; tests of
the systemd unit, the sandbox or the development database pass their own command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from wapool.devdb import free_port

WAPOOL_RUN = (sys.executable, "-m", "wapool", "run")
STOP_SECONDS = 15.0  # teardown: SIGTERM, then SIGKILL after this long


def scrubbed_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any WAPOOL_ setting, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")}
    return base | dict(env or {})


class Daemon:
    """One child process. Its stderr goes to ``log`` (appended to: restarts can share a file,
    each run reads from where it started), its stdout to ``log`` with the suffix ``.out``."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        *,
        port: int | None = None,
        new_session: bool = False,
    ) -> None:
        self.log = log
        self.port = port
        self.new_session = new_session
        self._origin = log.stat().st_size if log.exists() else 0
        self._cursor = self._origin
        with open(log, "ab") as err, open(log.with_suffix(".out"), "ab") as out:
            self.proc = subprocess.Popen(
                list(command), env=dict(env), cwd=cwd, stdout=out, stderr=err,
                start_new_session=new_session,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def text(self) -> str:
        """Everything this run has logged so far."""
        return self._read(self._origin)

    def rest(self) -> str:
        """What this run logged after the last line ``wait_for`` matched."""
        return self._read(self._cursor)

    def stdout(self) -> str:
        return self.log.with_suffix(".out").read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 30) -> list[str]:
        """Block until a line containing ``needle`` is logged after the previous match; return
        the lines from there up to and including it. Fails early if the process exits."""
        deadline = time.monotonic() + timeout
        while (lines := self._scan(needle)) is None:
            self._check_waiting(needle, deadline)
            time.sleep(0.05)
        return lines

    async def wait_for_async(self, needle: str, timeout: float = 30) -> list[str]:
        """``wait_for`` without blocking the event loop (fault proxies run on it)."""
        deadline = time.monotonic() + timeout
        while (lines := self._scan(needle)) is None:
            self._check_waiting(needle, deadline)
            await asyncio.sleep(0.05)
        return lines

    def get(self, path: str) -> tuple[int, str]:
        """HTTP GET on the daemon's port: (status, body), or (0, "") while nothing answers."""
        assert self.port is not None, "this daemon has no HTTP port"
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return 0, ""

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the process (its whole group if it was started in a session of its own)."""
        if self.new_session:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal, then wait for the exit status (bounded)."""
        self.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """End the process if it still runs: SIGTERM, then SIGKILL after ``STOP_SECONDS``."""
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, ProcessLookupError):
                self.stop(signal.SIGTERM, STOP_SECONDS)
        if self.new_session:  # leftovers of the group (a shell's children) go too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def _read(self, offset: int) -> str:
        with open(self.log, "rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")

    def _scan(self, needle: str) -> list[str] | None:
        """Complete lines from the cursor up to the first holding ``needle``; moves the cursor."""
        with open(self.log, "rb") as file:
            file.seek(self._cursor)
            data = file.read()
        lines: list[str] = []
        consumed = 0
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # still being written
            consumed += len(raw)
            lines.append(raw.decode(errors="replace").rstrip("\n"))
            if needle in lines[-1]:
                self._cursor += consumed
                return lines
        return None

    def _check_waiting(self, needle: str, deadline: float) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"exited {self.proc.returncode} before {needle!r}:\n{self._tail()}"
            )
        if time.monotonic() >= deadline:
            raise AssertionError(f"{needle!r} not logged in time:\n{self._tail()}")

    def _tail(self) -> str:
        return self._read(self._origin)[-3000:]


class Daemons:
    """Starts daemons for one test; ``close`` ends every one of them."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._started: list[Daemon] = []

    def start(
        self,
        env: Mapping[str, str] | None = None,
        *,
        command: Sequence[str] = WAPOOL_RUN,
        cwd: Path | None = None,
        log: Path | None = None,
        new_session: bool = False,
    ) -> Daemon:
        """Start ``command`` (``wapool run``) with ``env`` over a scrubbed environment. Unless
        ``env`` names one, the daemon gets an HTTP port of its own (8787 may be taken)."""
        settings = dict(env or {})
        settings.setdefault("WAPOOL_HTTP_ADDR", f"127.0.0.1:{free_port()}")
        port = int(settings["WAPOOL_HTTP_ADDR"].rsplit(":", 1)[1])
        number = len(self._started)
        log = log or self._tmp_path / (f"daemon{number}.log" if number else "daemon.log")
        daemon = Daemon(command, scrubbed_env(settings), cwd or self._tmp_path, log, port=port,
                        new_session=new_session)  # fmt: skip
        self._started.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in reversed(self._started):
            daemon.close()
