"""Sending from the outbox: one loop per company this daemon drives, in acceptance order.

For each queued message: wait until the session is connected (or the message's ``expires_at``
passes: ``failed``), wait for the pacer's token, mark it ``sending`` durably, hand it to the
worker, and record what came of it. One message per company is in flight at a time, which keeps
a chat's order and makes "which message did a kill interrupt" a single row.

A worker that dies, or does not answer within ``result_timeout``, leaves the message
``uncertain``: it may have left. ``not_sent`` (no connection yet) puts it back in the queue.
Only messages of companies whose lease this daemon holds are sent (``driven``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wapool.clock import Clock, SystemClock
from wapool.messaging.outbound import Record, Status
from wapool.messaging.outbox import Outbox
from wapool.messaging.pacing import Pacer
from wapool.whatsapp.sending import Outcome, SendCommand, SendResult

log = logging.getLogger(__name__)

#: (company, command) -> whether it was handed to a worker.
Deliver = Callable[[str, SendCommand], Awaitable[bool]]
#: How long an idle company loop sleeps between looks at a clock-bound condition.
IDLE_SECONDS = 1.0


@dataclass
class SenderStats:
    sent: int = 0
    failed: int = 0
    uncertain: int = 0
    requeued: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        pacer: Pacer,
        deliver: Deliver,
        connected: Callable[[str], bool],
        *,
        result_timeout: float = 120.0,
        clock: Clock | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._outbox = outbox
        self._pacer = pacer
        self._deliver = deliver
        self._connected = connected
        self._timeout = result_timeout
        self._clock = clock or SystemClock()
        self._on_change = on_change
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._inflight: dict[str, tuple[str, asyncio.Future[SendResult]]] = {}
        self.stats = SenderStats()

    # -- what the rest of the daemon calls -------------------------------------------------------

    def drive(self, companies: set[str]) -> None:
        """Run a loop for each of these companies, and for no other."""
        for company, task in list(self._loops.items()):
            if task.done():  # it failed (logged): start it again
                del self._loops[company]
        for company in companies - self._loops.keys():
            self._wakes[company] = asyncio.Event()
            self._loops[company] = asyncio.create_task(self._loop(company), name=f"send-{company}")
        for company in self._loops.keys() - companies:
            self._loops.pop(company).cancel()
            self._wakes.pop(company, None)

    def wake(self, company: str) -> None:
        event = self._wakes.get(company)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for event in self._wakes.values():
            event.set()

    def on_result(self, company: str, result: SendResult) -> None:
        pending = self._inflight.get(result.id)
        if pending is not None and pending[0] == company and not pending[1].done():
            pending[1].set_result(result)

    def on_worker_lost(self, company: str, reason: str) -> None:
        """The worker hosting ``company`` died: its message in flight may have left."""
        for message_id, (owner, future) in list(self._inflight.items()):
            if owner == company and not future.done():
                future.set_result(SendResult(message_id, Outcome.UNCERTAIN,
                                             reason=f"worker died while sending: {reason}"))  # fmt: skip

    async def close(self, timeout: float) -> None:
        """Stop taking messages; wait (bounded) for the ones in flight to be answered."""
        loops = list(self._loops.values())
        self._loops.clear()
        for task in loops:
            task.cancel()
        if loops:
            await asyncio.wait(loops, timeout=timeout)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # -- one company -----------------------------------------------------------------------------

    async def _loop(self, company: str) -> None:
        wake = self._wakes[company]
        while True:
            try:
                await self._round(company, wake)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an outbox write failed (full disk, ...): retry later
                log.error("sender_failed", extra={"company": company, "error": str(exc)},
                          exc_info=exc)  # fmt: skip
                await asyncio.sleep(IDLE_SECONDS)

    async def _round(self, company: str, wake: asyncio.Event) -> None:
        """Send what is queued (as far as the session and the pacing allow), then wait."""
        while True:
            wake.clear()  # before looking: a message accepted from here on wakes the wait below
            batch = self._outbox.queued(company, 50)
            progressed = False
            for record in batch:
                outcome = await self._one(company, record)
                if outcome is None:
                    break  # not connected: wait for a change
                progressed = True
            if progressed and batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), IDLE_SECONDS)
            return

    async def _one(self, company: str, record: Record) -> Status | None:
        """Send one message; None when the company cannot send now (it stays queued)."""
        if record.expires_at is not None and self._clock.time() >= record.expires_at:
            await self._finish(record.id, Status.FAILED, "expired: not sent before expires_at")
            return Status.FAILED
        await self._paced(company)  # over the limit it waits; it is never dropped
        if not self._connected(company):
            return None
        marked = await self._outbox.transition(record.id, Status.SENDING,
                                               allowed_from=[Status.QUEUED])  # fmt: skip
        if marked is None:
            return Status.QUEUED  # it changed meanwhile (retried, expired): look again
        self._pacer.take(company)
        self._on_change()
        result = await self._send(company, record)
        return await self._record(company, record, result)

    async def _paced(self, company: str) -> None:
        delay = self._pacer.delay(company)
        for _ in range(100):  # the bucket says how long; a few rounds at most (shared tokens)
            if delay <= 0:
                return
            await asyncio.sleep(delay)
            delay = self._pacer.delay(company)

    async def _send(self, company: str, record: Record) -> SendResult:
        media, text, filename = self._outbox.payload(record.id)
        command = SendCommand(record.id, record.to, text, record.reply_to, media,
                              record.media_mimetype, filename)  # fmt: skip
        future: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self._inflight[record.id] = (company, future)
        try:
            if not await self._deliver(company, command):
                return SendResult(record.id, Outcome.NOT_SENT, reason="not_connected: no worker")
            return await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            return SendResult(record.id, Outcome.UNCERTAIN,
                              reason=f"no answer from the worker in {self._timeout:g} s")  # fmt: skip
        finally:
            self._inflight.pop(record.id, None)

    async def _record(self, company: str, record: Record, result: SendResult) -> Status | None:
        stats = self.stats
        stats.outcomes[result.outcome.value] = stats.outcomes.get(result.outcome.value, 0) + 1
        if result.outcome is Outcome.SENT:
            stats.sent += 1
            await self._outbox.transition(record.id, Status.SENT, allowed_from=[Status.SENDING],
                                          whatsapp_id=result.whatsapp_id)  # fmt: skip
            self._on_change()
            return Status.SENT
        if result.outcome is Outcome.NOT_SENT:
            stats.requeued += 1
            await self._outbox.transition(record.id, Status.QUEUED, allowed_from=[Status.SENDING],
                                          reason=result.reason)  # fmt: skip
            return None
        status = Status.FAILED if result.outcome is Outcome.FAILED else Status.UNCERTAIN
        if status is Status.FAILED:
            stats.failed += 1
        else:
            stats.uncertain += 1
            log.error("send_uncertain", extra={"company": company, "id": record.id,
                                               "reason": result.reason or ""})  # fmt: skip
        await self._finish(record.id, status, result.reason or status.value, Status.SENDING)
        return status

    async def _finish(
        self, message_id: str, status: Status, reason: str, source: Status = Status.QUEUED
    ) -> None:
        await self._outbox.transition(message_id, status, allowed_from=[source], reason=reason)
        self._on_change()
