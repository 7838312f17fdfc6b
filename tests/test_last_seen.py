"""The registry and leases kept in the state directory: written whole, read back checked, and a
corrupt, torn, edited or foreign file detected, logged and ignored (the daemon then waits for
PostgreSQL)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wapool.clock import ManualClock
from wapool.db.pool import Database
from wapool.outage.last_seen import LastSeenStore
from wapool.outage.offline_start import plan
from wapool.registry.company import Company

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _company(cid: str, enabled: bool = True) -> Company:
    return Company(cid, "", enabled, f"{cid}@s.whatsapp.net", NOW, NOW)


def _saved(tmp_path: Path, clock: ManualClock, others: tuple[str, ...] = ()) -> LastSeenStore:
    store = LastSeenStore(tmp_path, "me", clock)
    store.save_registry([_company("a"), _company("b"), _company("c", enabled=False)], others)
    store.save_leases({"a": 3, "c": 1})
    return store


def test_what_was_written_is_read_back_with_its_age(tmp_path: Path) -> None:
    clock = ManualClock()
    _saved(tmp_path, clock)
    clock.advance(42)
    seen = LastSeenStore(tmp_path, "me", clock).load()
    assert seen is not None
    assert [c.id for c in seen.companies] == ["a", "b", "c"]
    assert seen.companies[0] == _company("a")
    assert seen.leases == {"a": 3, "c": 1}
    assert seen.age_seconds(clock.time()) == pytest.approx(42)
    started = plan("auto", seen, clock.time())
    assert started is not None
    assert started.resumed == {"a": 3}  # c is disabled: never resumed
    assert [c.id for c in started.companies] == ["a", "b"]


def test_the_policy_decides(tmp_path: Path) -> None:
    clock = ManualClock()
    _saved(tmp_path, clock, others=("other-host",))
    seen = LastSeenStore(tmp_path, "me", clock).load()
    assert plan("auto", seen, clock.time()) is None  # several hosts: wait
    assert plan("resume", seen, clock.time()) is not None
    assert plan("wait", seen, clock.time()) is None
    assert plan("resume", None, clock.time()) is None


@pytest.mark.parametrize(
    "damage",
    ["truncated", "edited", "garbage", "empty", "wrong_kind", "bad_company"],
)
@pytest.mark.parametrize("name", ["registry.json", "leases.json"])
def test_a_damaged_file_is_detected_logged_and_ignored(
    tmp_path: Path, name: str, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    _saved(tmp_path, ManualClock())
    path = tmp_path / name
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "edited":
        path.write_bytes(raw.replace(b'"me"', b'"mE"', 1))
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff" * 50)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "wrong_kind":
        doc = json.loads(raw)
        doc["kind"] = "something"
        path.write_text(json.dumps(doc))
    else:  # a well-formed file whose content is not: the checksum is recomputed to match
        from wapool.outage.state_file import read_state, write_state

        kind = name.split(".")[0]
        body = read_state(path, kind)
        assert body is not None
        if kind == "registry":
            body["companies"][0]["id"] = "../../etc"
        else:
            body["leases"] = {"a": "three"}
        write_state(path, kind, body)
    with caplog.at_level(logging.INFO):
        assert LastSeenStore(tmp_path, "me").load() is None
    assert "last_seen_corrupt" in caplog.text


def test_files_of_another_daemon_are_not_used(tmp_path: Path) -> None:
    _saved(tmp_path, ManualClock())
    assert LastSeenStore(tmp_path, "someone-else").load() is None


def test_missing_files_mean_nothing_to_resume(tmp_path: Path) -> None:
    assert LastSeenStore(tmp_path, "me").load() is None
    _saved(tmp_path, ManualClock())
    (tmp_path / "leases.json").unlink()
    assert LastSeenStore(tmp_path, "me").load() is None


def test_lease_file_is_rewritten_only_when_the_leases_change(tmp_path: Path) -> None:
    clock = ManualClock()
    store = _saved(tmp_path, clock)
    before = (tmp_path / "leases.json").stat().st_mtime_ns
    store.save_leases({"a": 3, "c": 1})
    assert (tmp_path / "leases.json").stat().st_mtime_ns == before
    store.save_leases({"a": 4})
    seen = LastSeenStore(tmp_path, "me", clock).load()
    assert seen is not None
    assert seen.leases == {"a": 4}
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind


async def test_saves_run_off_the_event_loop_the_last_one_asked_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save writes and fsyncs a file and its folder: never on the event loop's thread."""
    import asyncio
    import threading

    from wapool.outage import last_seen
    from wapool.outage.resume import remember_leases

    threads: list[int] = []
    write = last_seen.write_state

    def recorded(path: Path, kind: str, body: dict[str, object]) -> None:
        threads.append(threading.get_ident())
        write(path, kind, body)

    monkeypatch.setattr(last_seen, "write_state", recorded)
    store = LastSeenStore(tmp_path, "me", ManualClock())
    saves = [remember_leases(store, {"a": epoch}) for epoch in range(1, 6)]
    await asyncio.wait_for(asyncio.gather(*saves), 10)
    assert len(threads) == 5
    assert threading.get_ident() not in threads
    seen = LastSeenStore(tmp_path, "me").load()
    assert seen is None  # no registry written: nothing to resume, but the leases are
    body = json.loads((tmp_path / "leases.json").read_text())["body"]
    assert body["leases"] == {"a": 5}


class _HeldClock(ManualClock):
    """Its first reading waits until ``release`` is set (a save's thread held before it writes)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.entered, self.release = threading.Event(), threading.Event()
        self._readings = 0

    def time(self) -> float:
        self._readings += 1
        if self._readings == 1:
            self.entered.set()
            assert self.release.wait(10), "never released"
        return super().time()


async def test_a_save_left_running_by_a_cancelled_task_never_overwrites_a_later_one(
    db: Database, tmp_path: Path
) -> None:
    """The task awaiting a save is cancelled (the daemon stopping) while its thread still runs:
    the next save may go first, and the earlier one, finishing after it, must not put the older
    state back over it (a restart during an outage would resume from that older state)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from wapool.outage.resume import remember_registry

    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=4)
    loop.set_default_executor(pool)  # to know when the cancelled save's thread is done
    try:
        clock = _HeldClock()
        store = LastSeenStore(tmp_path, "me", clock)
        first = asyncio.create_task(remember_registry(db, store, [_company("old")]))
        assert await asyncio.to_thread(clock.entered.wait, 10)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(remember_registry(db, store, [_company("new")]), 10)
        clock.release.set()
        pool.shutdown(wait=True)  # the cancelled save's thread has finished
    finally:
        clock.release.set()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=4))
    body = json.loads((tmp_path / "registry.json").read_text())["body"]
    assert [c["id"] for c in body["companies"]] == ["new"]
