"""A daemon under local faults, as the fault tests drive it (issue 12): started as root or as
``nobody`` (see ``nonroot``), its log read as it grows, its HTTP views fetched, and the
changes its stores owe PostgreSQL read without touching the files.

Every wait is a coroutine: the fault proxy between the daemon and PostgreSQL runs on the
test's event loop, which must keep turning."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path

import psycopg

from tests.nonroot import NonRoot
from wapool.devdb import free_port

#: (table, key) -> the image a change left (None: the key was deleted).
Changes = dict[tuple[str, str], str | None]


class RigDaemon:
    """``wapool run`` in a child process; stderr appended to ``log``."""

    def __init__(
        self,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        nonroot: NonRoot | None = None,
        *,
        pipe_log: bool = False,
    ) -> None:
        """``pipe_log``: the log goes through a pipe this process copies to ``log`` (the daemon
        then never writes a file of its own for it: see ``diskfull``)."""
        self.port = free_port()
        self.log = log
        self.start = log.stat().st_size if log.exists() else 0
        if nonroot is not None:
            command = nonroot.command("-m", "wapool", "run")
            base = nonroot.env()
        else:
            command = [sys.executable, "-m", "wapool", "run"]
            base = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")}
        full = base | dict(env) | {"WAPOOL_HTTP_ADDR": f"127.0.0.1:{self.port}"}
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                command, env=full, cwd=cwd, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE if pipe_log else err, start_new_session=True,
            )  # fmt: skip
        if pipe_log:
            threading.Thread(target=self._copy_log, daemon=True).start()

    def _copy_log(self) -> None:
        assert self.proc.stderr is not None
        with open(self.log, "ab", buffering=0) as out:
            for line in self.proc.stderr:
                out.write(line)

    def text(self) -> str:
        with open(self.log, "rb") as file:
            file.seek(self.start)
            return file.read().decode(errors="replace")

    async def wait_for(self, needle: str, timeout: float = 30, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while (text := self.text()).count(needle) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {needle!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not logged in {timeout} s:\n{text[-3000:]}")
            await asyncio.sleep(0.05)
        return text

    async def get(self, path: str) -> tuple[int, str]:
        return await asyncio.to_thread(self._get, path)

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    async def status(self) -> dict[str, object]:
        code, body = await self.get("/status")
        assert code == 200, body
        result: dict[str, object] = json.loads(body)
        return result

    async def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout)

    async def kill(self) -> None:
        """SIGKILL the daemon and its workers (its whole session)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait, 10)
        await _reap_group(self.proc.pid)

    def end(self) -> None:
        """Teardown: whatever state it is in, the daemon and its workers are gone."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pids(self) -> list[int]:
        """The daemon and its descendants (workers, neonize helpers)."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            todo.extend(int(c) for c in children)
        return found


async def _reap_group(pgid: int) -> None:
    """Wait until no process of the killed session is left (workers die with it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def pending_changes(store: Path) -> Changes:
    """The last state of every key a store's change log holds (what it owes PostgreSQL), read
    without creating or changing any file (the daemon may be running)."""
    idle = not store.with_name(store.name + "-wal").exists()
    uri = store.absolute().as_uri() + "?mode=ro" + ("&immutable=1" if idle else "")
    with closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
        rows = conn.execute("SELECT tbl, op, pk, img FROM wapool_changelog ORDER BY seq")
        return {(t, k): (i if op == "U" else None) for t, op, k, i in rows if t != "wapool_purge"}


def postgres_rows(database_url: str, company: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tbl, pk, image FROM store_rows WHERE company_id = %s", (company,)
        ).fetchall()
    return {(t, k): i for t, k, i in rows}


def missing_from(rows: Mapping[tuple[str, str], str], changes: Changes) -> list[tuple[str, str]]:
    """Keys whose change is not what PostgreSQL holds."""
    return [key for key, image in changes.items() if rows.get(key) != image]


def run_as(
    nonroot: NonRoot | None, args: Sequence[str], env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``wapool ARGS`` as the daemon's user."""
    if nonroot is not None:
        command, base = nonroot.command("-m", "wapool", *args), nonroot.env()
    else:
        command = [sys.executable, "-m", "wapool", *args]
        base = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")}
    return subprocess.run(
        command, env=base | dict(env), cwd=cwd, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
