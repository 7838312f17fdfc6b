"""One writer thread per SQLite file, committing whatever is pending in one transaction.

Every change is a small function of a connection. Callers on the event loop ``await`` it; the
thread takes everything queued at that moment, runs each in its own savepoint (one failing
change fails only its caller), commits once (one fsync for the batch) and only then answers
every caller. While a commit runs, new changes queue up and form the next batch: under load the
batches grow and the fsyncs per change fall, so the time to a durable answer stays near one
commit. SQLite releases the GIL while it works, so the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Change = Callable[[sqlite3.Connection], Any]
#: The most changes one transaction takes.
MAX_BATCH = 1000


@dataclass
class _Pending:
    change: Change
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class GroupCommitWriter:
    def __init__(self, conn: sqlite3.Connection, name: str = "sqlite-writer") -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self.commits = 0
        self.changes = 0
        self._thread.start()

    async def write(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``change`` in the next transaction; return its result once that is durable."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Pending(change, future, loop))
        return await future

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the thread (bounded)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                outcomes.append(self._apply(item.change))
            self._conn.execute("COMMIT")
        except Exception as exc:  # the commit itself failed (disk full, I/O): nobody is durable
            log.error("outbox_commit_failed", extra={"error": str(exc), "changes": len(batch)})
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            outcomes = [(False, exc)] * len(batch)
        self.commits += 1
        self.changes += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, tuple[bool, Any]]]] = {}
        for item, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item, outcome))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_answer, answers)

    def _apply(self, change: Change) -> tuple[bool, Any]:
        self._conn.execute("SAVEPOINT change")
        try:
            result = change(self._conn)
        except Exception as exc:
            self._conn.execute("ROLLBACK TO change")
            self._conn.execute("RELEASE change")
            return False, exc
        self._conn.execute("RELEASE change")
        return True, result


def _answer(answers: list[tuple[_Pending, tuple[bool, Any]]]) -> None:
    for item, (ok, value) in answers:
        if item.future.done():
            continue
        if ok:
            item.future.set_result(value)
        else:
            item.future.set_exception(value)
