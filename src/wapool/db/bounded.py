"""Run an awaitable with a hard deadline, even on a link that swallows packets.

``asyncio.timeout`` cancels once and then waits for the coroutine to unwind. psycopg answers a
cancellation by trying to cancel the query on the server (up to 10 s on a blackholed link);
a second cancellation makes it close the connection at once. ``bounded`` delivers that second
cancellation after a short grace, so the caller gets ``TimeoutError`` close to the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

CANCEL_GRACE_SECONDS = 0.25


async def bounded(awaitable: Awaitable[T], timeout: float, what: str = "operation") -> T:
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        await _cancel(task)
        raise
    if task in done:
        return task.result()
    await _cancel(task)
    raise TimeoutError(f"{what} did not finish within {timeout:g} s")


async def _cancel(task: asyncio.Future[T]) -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
    if not done:
        task.cancel()  # the second interrupt: psycopg closes the connection instead of waiting
        await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: an error racing the timeout is not "never retrieved"
