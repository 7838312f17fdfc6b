"""Worker processes as seen from the main process: spawn, talk, watch, restart.

Companies are packed into shards of up to ``per_worker``. A worker that exits (a Go panic, a
kill), stops sending heartbeats, or whose descriptor count passes ``max_fds`` (neonize leaks one
per failed connect) is killed; every company of its shard is reported through ``on_crash`` so
the supervisor restarts it, on another worker, with backoff. Other workers are untouched.

One module over 250 lines: the worker pool's spawning, protocol reading and health checks
share one process table and are read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wapool.supervisor import protocol
from wapool.whatsapp.events import WhatsAppEvent
from wapool.whatsapp.sending import SendCommand, SendResult

log = logging.getLogger(__name__)

OnEvent = Callable[[str, WhatsAppEvent], None]
OnCrash = Callable[[str, str], None]
#: (company, result): a worker answered a ``send``.
OnSendResult = Callable[[str, SendResult], None]
#: (company, inbox seq, new messages): the company's inbox advanced.
OnInbox = Callable[[str, int, int], None]


@dataclass
class WorkerHandle:
    index: int
    process: asyncio.subprocess.Process
    companies: dict[str, Path] = field(default_factory=dict)
    last_heartbeat: float = field(default_factory=time.monotonic)
    fds: int = 0
    pid: int = 0
    reader: asyncio.Task[None] | None = None
    doomed: str | None = None


class WorkerPool:
    def __init__(
        self,
        backend: str,
        per_worker: int,
        on_event: OnEvent,
        on_crash: OnCrash,
        *,
        heartbeat_timeout: float = 10.0,
        max_fds: int = 1024,
        backend_args: tuple[str, ...] = (),
    ) -> None:
        self._backend = backend
        self._backend_args = backend_args
        self._per_worker = per_worker
        self._on_event = on_event
        self._on_crash = on_crash
        self._heartbeat_timeout = heartbeat_timeout
        self._max_fds = max_fds
        self._workers: dict[int, WorkerHandle] = {}
        self._next_index = 0
        self.restarts = 0
        self.rejected_messages = 0
        self.on_send_result: OnSendResult | None = None
        #: Also told of each company whose worker died (messaging: sends in flight).
        self.crash_listeners: list[OnCrash] = []
        self.on_inbox: OnInbox = lambda _company, _seq, _messages: None
        #: Company -> (worker index, resolved once its client is gone): stops not yet confirmed.
        self._stopping: dict[str, tuple[int, asyncio.Future[None]]] = {}

    @property
    def workers(self) -> list[WorkerHandle]:
        return list(self._workers.values())

    def worker_of(self, company: str) -> WorkerHandle | None:
        return next((w for w in self._workers.values() if company in w.companies), None)

    async def start_company(self, company: str, store: Path) -> None:
        worker = self.worker_of(company)
        if worker is None:
            worker = next(
                (w for w in self._workers.values()
                 if len(w.companies) < self._per_worker and not w.doomed),
                None,
            ) or await self._spawn()  # fmt: skip
            worker.companies[company] = store
        await self._send(worker, protocol.encode("start", company=company, store=str(store)))

    async def stop_company(self, company: str) -> None:
        """Ask the company's worker to stop its client (``stopped`` waits for the answer)."""
        worker = self.worker_of(company)
        if worker is not None:
            worker.companies.pop(company, None)
            future = asyncio.get_running_loop().create_future()
            self._stopping[company] = (worker.index, future)
            await self._send(worker, protocol.encode("stop", company=company))

    async def stopped(self, company: str, timeout: float) -> bool:
        """Wait until the company's client is gone: its worker said it stopped cleanly, or the
        worker exited. False if that did not happen within ``timeout`` (it may still run)."""
        entry = self._stopping.get(company)
        if entry is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(entry[1]), timeout)
        except TimeoutError:
            return False
        return True

    def _gone(self, company: str, worker: int | None = None) -> None:
        """The company's client is gone (``worker``: every client of that worker is)."""
        names = (
            [c for c, (w, _) in self._stopping.items() if w == worker]
            if worker is not None
            else [company]
        )
        for name in names:
            entry = self._stopping.pop(name, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(None)

    async def command(self, company: str, kind: str, **fields: str) -> None:
        worker = self.worker_of(company)
        if worker is None:
            raise LookupError(f"company {company!r} runs on no worker")
        await self._send(worker, protocol.encode(kind, company=company, **fields))

    async def send(self, company: str, command: SendCommand) -> bool:
        """Hand a message to the worker hosting ``company``; False if none could take it (then
        it certainly was not sent)."""
        return await self.deliver(company, protocol.encode_send(company, command))

    async def deliver(self, company: str, message: bytes) -> bool:
        """Write an encoded command to the worker hosting ``company``; False if none can."""
        worker = self.worker_of(company)
        stdin = worker.process.stdin if worker is not None else None
        if worker is None or worker.doomed or stdin is None or stdin.is_closing():
            return False
        await self._send(worker, message)
        return True

    async def check(self) -> None:
        """Kill workers that stopped answering or leak descriptors (called periodically)."""
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if now - worker.last_heartbeat > self._heartbeat_timeout:
                self._kill(worker, f"no heartbeat for {now - worker.last_heartbeat:.0f} s")
            elif worker.fds > self._max_fds:
                self._kill(worker, f"{worker.fds} open descriptors (limit {self._max_fds})")

    async def close(self, timeout: float = 15.0) -> None:
        for worker in list(self._workers.values()):
            worker.doomed = "shutdown"
            await self._send(worker, protocol.encode("shutdown"))
        for worker in list(self._workers.values()):
            try:
                await asyncio.wait_for(worker.process.wait(), timeout)
            except TimeoutError:
                worker.process.kill()
            if worker.reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.reader
        self._workers.clear()

    async def _spawn(self) -> WorkerHandle:
        # The worker asks the kernel to kill it when this process dies (worker_main); the
        # request follows the forking thread, which is the event loop's (the main thread).
        env = os.environ | {protocol.PARENT_ENV: str(os.getpid())}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wapool.supervisor.worker_main", self._backend,
            *self._backend_args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=protocol.MAX_LINE * 2, env=env,
        )  # fmt: skip
        worker = WorkerHandle(self._next_index, process, pid=process.pid)
        self._next_index += 1
        self._workers[worker.index] = worker
        worker.reader = asyncio.create_task(self._read(worker), name=f"worker-{worker.index}")
        log.info("worker_started", extra={"worker": worker.index, "pid": process.pid})
        return worker

    async def _send(self, worker: WorkerHandle, message: bytes) -> None:
        stdin = worker.process.stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.write(message)
        with contextlib.suppress(ConnectionError):
            await stdin.drain()

    async def _read(self, worker: WorkerHandle) -> None:
        assert worker.process.stdout is not None
        while True:
            try:
                line = await worker.process.stdout.readline()
            except ValueError:  # longer than the limit
                self.rejected_messages += 1
                continue
            if not line:
                break
            try:
                kind, fields = protocol.decode(line)
                self._dispatch(worker, kind, fields)
            except protocol.ProtocolError as exc:
                self.rejected_messages += 1
                log.warning("worker_bad_message", extra={"worker": worker.index, "error": str(exc)})
            except Exception:
                # A listener's bug must not end the reader: unread, the worker would block on
                # its output, be killed for a missed heartbeat and never be reported dead.
                log.exception("worker_message_failed", extra={"worker": worker.index})
        code = await worker.process.wait()
        self._workers.pop(worker.index, None)
        self._gone("", worker=worker.index)
        reason = worker.doomed or f"worker exited with status {code}"
        if worker.doomed != "shutdown":
            self.restarts += 1
            log.error(
                "worker_died", extra={"worker": worker.index, "pid": worker.pid, "reason": reason}
            )
            for company in list(worker.companies):
                self._on_crash(company, reason)
        for company in list(worker.companies):
            for listener in self.crash_listeners:
                listener(company, reason)

    def _dispatch(self, worker: WorkerHandle, kind: str, fields: dict[str, object]) -> None:
        worker.last_heartbeat = time.monotonic()
        if kind == "heartbeat":
            worker.fds = int(str(fields["fds"]))
        elif kind == "event":
            company = str(fields["company"])
            if company in worker.companies:
                self._on_event(company, protocol.decode_event(fields))
        elif kind == "inbox":
            company = str(fields["company"])
            if company in worker.companies:
                self.on_inbox(company, int(str(fields["seq"])), int(str(fields["messages"])))
        elif kind == "stopped" and fields.get("clean") is True:
            self._gone(str(fields["company"]))
        elif kind == "stopped" and fields.get("clean") is False:
            # A client that would not stop (neonize can hang a minute): recycle the process.
            self._kill(worker, f"client {fields['company']} did not stop in time")
        elif kind == "send_result" and self.on_send_result is not None:
            self.on_send_result(str(fields["company"]), protocol.decode_send_result(fields))
        elif kind == "error":
            # Not ``**fields``: a ``message`` key would clash with the log record's own.
            log.warning("worker_error", extra={"worker": worker.index,
                        "company": fields.get("company", ""), "error": fields.get("message", "")})  # fmt: skip

    def _kill(self, worker: WorkerHandle, reason: str) -> None:
        worker.doomed = reason
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
