"""The supervisor reconciles desired companies with running clients, through session states.

It starts sessions for companies whose store is ready, restarts them when their worker dies,
reconnects them with backoff (through a global connect gate), and stops the ones that leave.
Every start, restarts included, first asks the start guard (``bringup``: is the company's lease
live right now?); a refused start waits for a later tick. A session whose store failed
(``store_failed``) is restarted only after ``repair`` (the keeper's ``recover``) says the store
is usable again; repairs are retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Protocol

from wapool.backoff import Backoff
from wapool.clock import Clock, SystemClock
from wapool.supervisor.session import TERMINAL, ConnectGate, Session, State
from wapool.supervisor.workers import WorkerPool
from wapool.whatsapp import events as ev

log = logging.getLogger(__name__)

OnTransition = Callable[[str, State, ev.WhatsAppEvent], Coroutine[Any, Any, None]]
#: Make a failed store usable again (inspect, restore if proven broken); True when it is.
StoreRepair = Callable[[str], Awaitable[bool]]


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("supervisor_action_failed", exc_info=task.exception())


#: Events that end a connect attempt (whatever its outcome): the gate slot is freed.
_SETTLING = (
    ev.Connected, ev.ConnectFailed, ev.Disconnected, ev.LoggedOut, ev.StreamReplaced,
    ev.TemporaryBan, ev.ClientOutdated, ev.QrCode, ev.StoreFailed,
)  # fmt: skip


class StartGuard(Protocol):
    def may_start(self, company: str) -> bool:
        """May a client for ``company`` start right now?"""

    def started(self, company: str) -> None:
        """A client for ``company`` was just started."""


class _AlwaysStart:
    def may_start(self, _company: str) -> bool:
        return True

    def started(self, _company: str) -> None:
        pass


class Supervisor:
    def __init__(
        self,
        backend: str,
        per_worker: int,
        store_path: Callable[[str], Path],
        *,
        connect_limit: int = 8,
        clock: Clock | None = None,
        heartbeat_timeout: float = 10.0,
        backend_args: tuple[str, ...] = (),
        on_transition: OnTransition | None = None,
        guard: StartGuard | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self.guard = guard or _AlwaysStart()
        self._deferred: set[str] = set()
        self._store_path = store_path
        self.gate = ConnectGate(connect_limit)
        self.sessions: dict[str, Session] = {}
        self.pool = WorkerPool(
            backend, per_worker, self._on_event, self._on_crash,
            heartbeat_timeout=heartbeat_timeout, backend_args=backend_args,
        )  # fmt: skip
        #: Called with (company, new state) on every change of a session's state.
        self.state_listeners: list[Callable[[str, State], None]] = []
        self.pool.on_inbox = self._on_inbox
        #: Called with (company, seq) whenever a company's inbox advances (messaging readers).
        self.inbox_listeners: list[Callable[[str, int], None]] = []
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._on_transition = on_transition
        self._transitions: asyncio.Queue[tuple[str, State, ev.WhatsAppEvent]] = asyncio.Queue()
        self._reporter: asyncio.Task[None] | None = None
        #: Set by the runtime (the keeper's ``recover``); without it a failed store is retried
        #: as it is.
        self.repair: StoreRepair | None = None

    def want(self, companies: Iterable[str]) -> list[str]:
        """Make these the running companies; return those to stop (the caller awaits stop)."""
        wanted = set(companies)
        now = self._clock.monotonic()
        for company in sorted(wanted - self.sessions.keys()):
            session = Session(company, Backoff(base=1.0, cap=300.0))
            session.next_attempt = now  # due at once; the gate staggers a crowd
            self.sessions[company] = session
        self._wake.set()
        return sorted(self.sessions.keys() - wanted)

    async def stop(self, company: str) -> None:
        self._deferred.discard(company)
        session = self.sessions.pop(company, None)
        if session is not None:
            session.stop(self._clock.monotonic())
            self.gate.release(company)
            await self.pool.stop_company(company)

    async def tick(self) -> None:
        now = self._clock.monotonic()
        for session in list(self.sessions.values()):
            company = session.company_id
            if session.repair_due(now):
                session.repairing()
                self._spawn(self._repair(company))
            if not session.due(now) or not self._allowed(company):
                continue
            if self.gate.try_acquire(company):
                session.start(now)
                await self.pool.start_company(company, self._store_path(company))
                self.guard.started(company)
        await self.pool.check()

    def _allowed(self, company: str) -> bool:
        """Ask the guard right before a start; say once (per refusal spell) that it waits."""
        if self.guard.may_start(company):
            self._deferred.discard(company)
            return True
        if company not in self._deferred:
            self._deferred.add(company)
            log.info("start_deferred", extra={"company": company, "reason": "lease not live"})
        return False

    async def run(self, stop: asyncio.Event, interval: float = 0.1) -> None:
        while not stop.is_set():
            await self.tick()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    async def close(self) -> None:
        await self.pool.close()
        if self._reporter is not None:
            await asyncio.wait({self._reporter}, timeout=5)

    def _on_event(self, company: str, event: ev.WhatsAppEvent) -> None:
        session = self.sessions.get(company)
        if session is None:
            return
        before = session.state
        session.on_event(event, self._clock.monotonic())
        if isinstance(event, _SETTLING):
            self.gate.release(company)
        if session.state is not before:
            for listener in self.state_listeners:
                listener(company, session.state)
            log.info(
                "session_state",
                extra={
                    "company": company,
                    "state": session.state.value,
                    "error": session.last_error or "",
                },
            )
        if session.state in TERMINAL:
            # No reconnect will follow: release the client and its worker slot.
            self._spawn(self.pool.stop_company(company))
        if self._on_transition is not None and (
            session.state is not before or isinstance(event, ev.Paired | ev.QrCode | ev.PairCode)
        ):
            # In order, one at a time: "starting" must never be recorded after "connected".
            self._transitions.put_nowait((company, session.state, event))
            if self._reporter is None or self._reporter.done():
                self._reporter = asyncio.get_running_loop().create_task(self._report())
        self._wake.set()

    async def _report(self) -> None:
        assert self._on_transition is not None
        while not self._transitions.empty():
            company, state, event = self._transitions.get_nowait()
            try:
                await self._on_transition(company, state, event)
            except Exception:
                log.exception("supervisor_action_failed")

    async def _repair(self, company: str) -> None:
        ok = False
        try:
            ok = await self.repair(company) if self.repair is not None else True
        finally:
            session = self.sessions.get(company)
            if session is not None:
                session.repaired(self._clock.monotonic(), ok)
                self._wake.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    def _on_inbox(self, company: str, seq: int, messages: int) -> None:
        session = self.sessions.get(company)
        if session is not None:
            session.messages += messages
        for listener in self.inbox_listeners:
            listener(company, seq)

    def _on_crash(self, company: str, reason: str) -> None:
        session = self.sessions.get(company)
        if session is None:
            return
        session.crashed(self._clock.monotonic(), reason)
        self.gate.release(company)
        self._wake.set()
