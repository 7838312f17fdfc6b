"""A store kept aside (``store.aside``) is a whole copy, its WAL included, whatever point a kill
stops the move at: what whatsmeow committed only to the WAL is never split from its store."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import new_store
from wapool.store import aside
from wapool.store.working_store import connect
from wapool.testing.whatsmeow_writes import WhatsmeowWriter

pytestmark = pytest.mark.timeout(60)


class Killed(BaseException):
    """The daemon dies here."""


@pytest.mark.parametrize("survives", [0, 1, 2])
def test_a_kill_during_the_move_leaves_a_whole_copy_aside(
    survives: int, whatsmeow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    path = new_store(whatsmeow_template, state, "acme")
    writer_conn = connect(path)
    writer_conn.execute("PRAGMA wal_autocheckpoint = 0")  # the last commits stay in the WAL
    writer = WhatsmeowWriter(writer_conn, random.Random(7))
    writer.pair()
    writer.session("late@s.whatsapp.net")
    assert os.path.getsize(str(path) + "-wal") > 0

    # The daemon is killed after ``survives`` removals or renames of the store's files.
    done = [0]
    real_unlink, real_replace = os.unlink, os.replace

    def dying(real: Callable[..., None]) -> Callable[..., None]:
        def op(*args: object, **kwargs: object) -> None:
            if done[0] == survives:
                raise Killed
            done[0] += 1
            real(*args, **kwargs)

        return op

    monkeypatch.setattr(os, "unlink", dying(real_unlink))
    monkeypatch.setattr(os, "replace", dying(real_replace))
    with pytest.raises(Killed):
        aside.set_aside(state, "acme", "lease taken over")
    monkeypatch.undo()
    # What a dead process leaves is the files as they are (no checkpoint at close): the late
    # commit is whole in one place at least, the store where it was or the copy kept aside.
    mains = [p for p in path.parent.iterdir() if p.name == path.name or p.name.endswith("Z")]
    assert mains, sorted(p.name for p in path.parent.iterdir())
    found = [p.name for p in mains if "late@s.whatsapp.net" in _sessions(p, tmp_path / "copy")]
    writer_conn.close()
    assert found, sorted(p.name for p in path.parent.iterdir())


def _sessions(main: Path, scratch: Path) -> set[str]:
    """The sessions in a copy of the store at ``main`` with its WAL (the files left alone)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for suffix in ("", "-wal"):
        if Path(str(main) + suffix).exists():
            shutil.copyfile(str(main) + suffix, scratch / f"s.db{suffix}")
    with closing(sqlite3.connect(scratch / "s.db")) as conn:
        return {r[0] for r in conn.execute("SELECT their_id FROM whatsmeow_sessions")}
