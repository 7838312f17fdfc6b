"""Run the daemon with an event-loop stall probe (bench only): ``python bench/loopprobe.py OUT
run``.

It starts ``wapool`` (``cli.main``) with its arguments, and meanwhile:

* a timer on the daemon's event loop every ``PERIOD`` seconds records how late it fired (the
  loop's lag: how long some callback held the loop);
* a watchdog thread looks every millisecond at when the loop last ticked; when it is more than
  ``STALL`` seconds ago it samples the loop thread's stack, so the stalls are attributed;
* ``gc.callbacks`` time every collection of the main thread (generation, duration).

At exit it writes a summary to OUT (text), of the window written in ``OUT.window`` (``start
end``, Unix seconds) if there is one: lag percentiles, stall counts by size, where the
loop thread was during stalls (innermost wapool/aiohttp/asyncio frames), GC pauses.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import gc
import sys
import threading
import time
import traceback

PERIOD = 0.002
STALL = 0.010

lags: list[tuple[float, float]] = []  # when (Unix seconds), seconds late
gc_pauses: list[tuple[float, int, float, float]] = []  # when, generation, wall, CPU seconds
stall_stacks: list[tuple[float, str]] = []
last_tick = [time.perf_counter()]
main_ident = threading.get_ident()


def _frames(frame: object) -> str:
    stack = traceback.extract_stack(frame)  # type: ignore[arg-type]
    keep = [
        f
        for f in stack
        if "wapool" in f.filename
        or "aiohttp" in f.filename
        or "psycopg" in f.filename
        or "sqlite" in f.filename
        or "json" in f.filename
    ]
    picked = (keep or stack)[-4:]
    return " <- ".join(
        f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}:{f.name}" for f in reversed(picked)
    )


def _watch() -> None:
    sampled_for = 0.0
    while True:
        time.sleep(0.001)
        since = last_tick[0]
        if time.perf_counter() - since > STALL and sampled_for != since:
            frame = sys._current_frames().get(main_ident)
            if frame is not None:
                stall_stacks.append((time.time(), _frames(frame)))
            sampled_for = since


def _start(loop: asyncio.AbstractEventLoop) -> None:
    expected = [time.perf_counter() + PERIOD]

    def tick() -> None:
        now = time.perf_counter()
        lags.append((time.time(), now - expected[0]))
        last_tick[0] = now
        expected[0] = now + PERIOD
        loop.call_later(PERIOD, tick)

    loop.call_later(PERIOD, tick)
    threading.Thread(target=_watch, daemon=True).start()


_gc_started = [0.0, 0.0]


def _gc(phase: str, info: dict[str, int]) -> None:
    if threading.get_ident() != main_ident:
        return
    if phase == "start":
        _gc_started[:] = [time.perf_counter(), time.thread_time()]
    else:
        wall, cpu = time.perf_counter() - _gc_started[0], time.thread_time() - _gc_started[1]
        gc_pauses.append((time.time(), info["generation"], wall, cpu))


class _Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.call_soon(_start, loop)
        return loop


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _report(path: str) -> None:
    try:  # the benchmark's measuring window, written by bench/inbound.py
        with open(path + ".window") as window:
            start, end = (float(x) for x in window.read().split())
    except OSError:
        start, end = 0.0, float("inf")

    def inside(at: float) -> bool:
        return start <= at < end

    ms = [x * 1000 for at, x in lags if inside(at)]
    stacks = collections.Counter(stack for at, stack in stall_stacks if inside(at))
    lines = [f"loop lag samples {len(ms)} (period {PERIOD * 1000:g} ms), in the window only"]
    for q in (0.5, 0.9, 0.99, 0.999):
        lines.append(f"  p{q * 100:g}: {_q(ms, q):.1f} ms")
    lines.append(f"  max: {max(ms, default=0):.1f} ms")
    for limit in (10, 20, 50, 100, 200, 500):
        lines.append(f"  stalls > {limit} ms: {sum(1 for x in ms if x > limit)}")
    lines.append(f"  total time in stalls > 10 ms: {sum(x for x in ms if x > 10) / 1000:.2f} s")
    lines.append("where the loop thread was in stalls > %g ms (count):" % (STALL * 1000))
    for stack, n in stacks.most_common(25):
        lines.append(f"  {n:5d}  {stack}")
    for gen in (0, 1, 2):
        pauses = [d * 1000 for at, g, d, _ in gc_pauses if g == gen and inside(at)]
        cpu = [c * 1000 for at, g, _, c in gc_pauses if g == gen and inside(at)]
        if pauses:
            lines.append(
                f"gc gen{gen}: {len(pauses)} collections, p99 {_q(pauses, 0.99):.2f} ms, "
                f"max {max(pauses):.2f} ms, total {sum(pauses) / 1000:.2f} s "
                f"(CPU: max {max(cpu):.2f} ms, total {sum(cpu) / 1000:.2f} s)"
            )
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    lines.append(
        f"objects tracked by the GC at exit: {sum(counts.values())} "
        f"(frozen {gc.get_freeze_count()}); most common:"
    )
    lines.extend(f"  {n:8d}  {name}" for name, n in counts.most_common(12))
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")


def main() -> None:
    out = sys.argv[1]
    del sys.argv[1]
    atexit.register(_report, out)
    gc.callbacks.append(_gc)
    asyncio.set_event_loop_policy(_Policy())
    from wapool.cli.main import main as wapool_main

    sys.exit(wapool_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
