"""The webhook dispatcher: every inbox event POSTed, signed, to ``WAPOOL_WEBHOOK_URL``.

Fed from the local inboxes (so it flows while PostgreSQL is down), woken by the workers' inbox
notices (no polling), built for throughput:

* **reads** — one reader pass takes every woken company's new events in one worker-thread hop,
  up to ``BATCH`` each; a company with ``max_outstanding`` events read but not finished is
  read again only once its backlog halves (memory stays bounded during a long receiver outage);
* **lanes** — events go to one lane per (company, chat): a lane delivers in order, one event
  at a time, so per-chat order holds; lanes run concurrently, so a chat whose deliveries fail
  delays only itself; ``max_in_flight`` bounds the requests in flight over all lanes;
* **retries** — any answer but 2xx, a timeout or a dropped connection is retried after a
  full-jitter backoff (``backoff.Backoff``: base, cap; injectable clock, sleep and randomness);
  an event older than ``max_age`` when its next attempt would start becomes a **dead letter**
  (recorded in ``cursors``, counted in status and /metrics) and its lane moves on;
* **progress** — per company a watermark (every event up to it delivered or dead) and the
  deliveries done above it are written to ``cursors`` in batches (every ``flush_every``
  seconds, one transaction for all companies). A restart resumes from the watermark and skips
  what was recorded as delivered: at least once, duplicates only for the last unflushed batch;
* **HTTP** — one aiohttp session, keep-alive connections reused (pool = ``max_in_flight``).

The body is the event's JSON (``model.to_json``) plus ``received_at``; headers and signature
are in ``signing``. Bodies and the secret never reach the logs.

One module because reading, lanes, retries and progress work on one per-company state (read
position, outstanding events, watermark) that is clearer read in one place than passed around.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from wapool.backoff import Backoff
from wapool.clock import Clock, SystemClock
from wapool.messaging import signing
from wapool.messaging.cursors import Cursors, DeadLetter, Progress
from wapool.messaging.feed import InboxFeed
from wapool.messaging.model import Envelope
from wapool.observability.redact import describe_error

log = logging.getLogger(__name__)

CONSUMER = "webhook"
BATCH = 1000
LATENCY_SAMPLES = 100_000

#: Sends one request: (body, headers) -> HTTP status; raises on a transport failure.
Post = Callable[[bytes, dict[str, str]], Awaitable[int]]


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: bytes
    max_age: float = 86_400.0
    timeout: float = 10.0
    max_in_flight: int = 64
    retry_base: float = 0.5
    retry_cap: float = 60.0


class HttpPost:
    """POST through one aiohttp session (keep-alive, at most ``limit`` connections)."""

    def __init__(self, url: str, timeout: float, limit: int) -> None:
        self._url, self._timeout, self._limit = url, timeout, limit
        self._session: object | None = None

    async def __call__(self, body: bytes, headers: dict[str, str]) -> int:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        assert isinstance(self._session, aiohttp.ClientSession)
        async with self._session.post(self._url, data=body, headers=headers) as response:
            await response.read()
            return response.status

    async def close(self) -> None:
        import aiohttp

        if isinstance(self._session, aiohttp.ClientSession):
            await self._session.close()


@dataclass
class WebhookStats:
    delivered: int = 0
    failed_attempts: int = 0
    dead_letters: int = 0
    in_flight: int = 0
    #: Seconds from the inbox write to the receiver's 2xx, latest samples.
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


@dataclass
class _Company:
    company: str
    path: Path
    identity: str = ""
    read_seq: int = -1
    watermark: int = 0
    #: Seqs read and not yet finished, in order; finished ones above the head in ``done``.
    outstanding: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    #: Delivered before a restart (above the watermark): not sent again.
    skip: set[int] = field(default_factory=set)
    full: bool = False
    #: Its identity read (again after a read failed: the inbox may have been replaced).
    opened: bool = False


@dataclass
class _Lane:
    company: _Company
    queue: deque[Envelope] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class Webhook:
    def __init__(
        self,
        config: WebhookConfig,
        cursors: Cursors,
        *,
        post: Post | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        max_outstanding: int = 10_000,
        flush_every: float = 0.05,
        feed: InboxFeed | None = None,
    ) -> None:
        self.config = config
        self._cursors = cursors
        self._feed = feed or InboxFeed()
        self._http = None if post is not None else HttpPost(
            config.url, config.timeout, config.max_in_flight
        )  # fmt: skip
        self._post: Post = post or self._http  # type: ignore[assignment]
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._rand = rand
        self._max_outstanding = max_outstanding
        self._flush_every = flush_every
        self._companies: dict[str, _Company] = {}
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._progress = Progress.empty()
        self.stats = WebhookStats()

    # -- membership and wake-ups -------------------------------------------------------------

    def add(self, company: str, inbox: Path) -> None:
        if company not in self._companies:
            self._companies[company] = _Company(company, inbox)
            self.wake(company)

    def remove(self, company: str) -> None:
        """Stop delivering a company's events (what is not finished is delivered later)."""
        self._companies.pop(company, None)
        for key in [k for k in self._lanes if k[0] == company]:
            lane = self._lanes.pop(key)
            if lane.task is not None:
                lane.task.cancel()

    def wake(self, company: str) -> None:
        """The company's inbox advanced (an inbox notice from its worker)."""
        self._feed.touch(company)
        self._dirty.add(company)
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Events read and not yet delivered (or dead)."""
        return sum(len(c.outstanding) for c in self._companies.values())

    # -- the loops ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        flusher = asyncio.create_task(self._flush_loop(stop), name="webhook-flush")
        try:
            while not stop.is_set():
                await _wait_either(self._wake, stop)
                self._wake.clear()
                if stop.is_set():
                    break
                await self._read_round()
        finally:
            for lane in list(self._lanes.values()):
                if lane.task is not None:
                    lane.task.cancel()
            await asyncio.gather(
                *(lane.task for lane in self._lanes.values() if lane.task), return_exceptions=True
            )
            await flusher
            await self.flush()
            if self._http is not None:
                await self._http.close()

    async def _read_round(self) -> None:
        dirty = [c for name in sorted(self._dirty) if (c := self._companies.get(name))]
        self._dirty.clear()
        ready = [c for c in dirty if len(c.outstanding) < self._max_outstanding]
        for state in dirty:
            state.full = state not in ready
        if not ready:
            return
        reads = await asyncio.to_thread(self._read_many, ready)
        for state, envelopes in reads:
            if self._companies.get(state.company) is not state:
                continue  # removed meanwhile
            for envelope in envelopes:
                self._route(state, envelope)
            if len(envelopes) >= BATCH:
                self.wake(state.company)  # more to read

    def _read_many(self, states: list[_Company]) -> list[tuple[_Company, list[Envelope]]]:
        out = []
        for state in states:
            try:
                self._open(state)
                room = self._max_outstanding - len(state.outstanding)
                envelopes, _ = self._feed.read(
                    state.company, state.path, state.read_seq, min(BATCH, room)
                )
                for envelope in envelopes:
                    _ = envelope.data  # parsed here, in the worker thread, not on the loop
                out.append((state, envelopes))
            except (sqlite3.Error, OSError) as exc:
                log.error(
                    "webhook_read_failed",
                    extra={"company": state.company, "error": describe_error(exc)},
                )
                state.opened = False
        return out

    def _open(self, state: _Company) -> None:
        if state.opened:
            return
        identity = self._feed.identity(state.company, state.path)
        state.opened = True
        if identity != state.identity:
            state.identity = identity
            state.watermark = self._cursors.get(state.company, CONSUMER, identity)
            state.skip = self._cursors.delivered_above(state.company, identity, state.watermark)
            state.read_seq = state.watermark
            state.outstanding.clear()
            state.done.clear()

    def _route(self, state: _Company, envelope: Envelope) -> None:
        state.read_seq = max(state.read_seq, envelope.seq)
        state.outstanding.append(envelope.seq)
        if envelope.seq in state.skip:
            state.skip.discard(envelope.seq)
            self._finish(state, envelope.seq)
            return
        key = (state.company, envelope.chat)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(state)
        lane.queue.append(envelope)
        if lane.task is None:
            lane.task = asyncio.create_task(self._run_lane(key, lane))

    async def _run_lane(self, key: tuple[str, str], lane: _Lane) -> None:
        try:
            while lane.queue:
                envelope = lane.queue[0]
                await self._deliver(lane.company, envelope)
                lane.queue.popleft()
        except Exception:
            log.exception("webhook_lane_failed", extra={"company": key[0]})
            raise
        finally:  # cancelled mid-queue (shutdown, removal): the rest is read after a restart
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _deliver(self, state: _Company, envelope: Envelope) -> None:
        # The inbox's JSON as written, plus received_at (no parse, no re-serialisation).
        body = f'{envelope.body[:-1]},"received_at":{envelope.received_at!r}}}'.encode()
        backoff = Backoff(self.config.retry_base, self.config.retry_cap, rand=self._rand)
        attempts = 0
        while True:
            attempts += 1
            error = await self._attempt(body, envelope, attempts)
            now = self._clock.time()
            if error is None:
                self.stats.delivered += 1
                self.stats.latencies.append(now - envelope.received_at)
                self._progress.delivered.append((state.company, state.identity, envelope.seq))
                self._finish(state, envelope.seq)
                return
            self.stats.failed_attempts += 1
            delay = backoff.next_delay()
            if now + delay - envelope.received_at > self.config.max_age:
                self._dead(state, envelope, attempts, error)
                return
            await self._sleep(delay)

    async def _attempt(self, body: bytes, envelope: Envelope, attempt: int) -> str | None:
        async with self._slots:
            self.stats.in_flight += 1
            try:
                stamp = int(self._clock.time())
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "wapool-webhook",
                    signing.EVENT_ID: envelope.event_id,
                    signing.TIMESTAMP: str(stamp),
                    signing.SIGNATURE: signing.sign(self.config.secret, stamp, body),
                    "X-Wapool-Attempt": str(attempt),
                }
                status = await self._post(body, headers)
            except Exception as exc:  # timeouts, refused or dropped connections, aiohttp errors
                # The class only: a message could carry the URL, and the URL may hold a token.
                return type(exc).__name__
            finally:
                self.stats.in_flight -= 1
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _dead(self, state: _Company, envelope: Envelope, attempts: int, error: str) -> None:
        self.stats.dead_letters += 1
        letter = DeadLetter(
            state.company, envelope.seq, envelope.event_id, envelope.chat, attempts,
            error, self._clock.time(),
        )  # fmt: skip
        self._progress.dead.append((state.company, state.identity, letter))
        log.warning(
            "webhook_dead_letter",
            extra={"company": state.company, "event_id": envelope.event_id, "attempts": attempts,
                   "error": error},
        )  # fmt: skip
        self._finish(state, envelope.seq)

    def _finish(self, state: _Company, seq: int) -> None:
        state.done.add(seq)
        moved = False
        while state.outstanding and state.outstanding[0] in state.done:
            state.done.discard(head := state.outstanding.popleft())
            state.watermark, moved = head, True
        if moved:
            self._progress.cursors[(state.company, CONSUMER)] = (state.identity, state.watermark)
        if state.full and len(state.outstanding) < self._max_outstanding // 2:
            state.full = False
            self.wake(state.company)

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._flush_every)
            try:
                await self.flush()
            except (sqlite3.Error, OSError) as exc:
                log.error("webhook_progress_not_saved", extra={"error": describe_error(exc)})

    async def flush(self) -> None:
        """Write the progress gathered since the last flush (one transaction)."""
        progress, self._progress = self._progress, Progress.empty()
        if progress:
            await asyncio.to_thread(self._cursors.save, progress)


async def _wait_either(first: asyncio.Event, second: asyncio.Event) -> None:
    waiters = {asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
