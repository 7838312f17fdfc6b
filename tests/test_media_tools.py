"""neonize's ffmpeg warning: dropped in the workers, said once by the daemon (and the doctor)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.daemon import Daemon, Daemons
from wapool.whatsapp import media_tools

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def quiet_neonize() -> Iterator[None]:
    media_tools.silence_neonize_notice()
    yield
    logging.getLogger("neonize.utils.ffmpeg").removeFilter(media_tools._NOTICE)


def _tools_dir(path: Path, *names: str) -> Path:
    path.mkdir()
    for name in names:
        (path / name).write_text("#!/bin/sh\n")
        (path / name).chmod(0o755)
    return path


def test_the_daemon_reports_missing_tools_once_at_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wapool")
    monkeypatch.setenv("PATH", str(_tools_dir(tmp_path / "half", "ffmpeg")))
    media_tools.report_once()
    (record,) = caplog.records
    assert (record.levelno, record.getMessage()) == (logging.INFO, "media_tools_missing")
    assert record.__dict__["missing"] == "ffprobe"
    caplog.clear()
    monkeypatch.setenv("PATH", str(_tools_dir(tmp_path / "both", "ffmpeg", "ffprobe")))
    media_tools.report_once()
    assert caplog.records == []


@pytest.mark.process  # importing neonize looks for libmagic with ldconfig
@pytest.mark.usefixtures("quiet_neonize")
def test_neonize_own_check_is_dropped_other_neonize_warnings_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from neonize.utils import ffmpeg

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(ffmpeg, "_ffmpeg_checked", False)
    assert ffmpeg.check_ffmpeg_available() is False  # it did look, and found nothing
    logging.getLogger("neonize.utils.ffmpeg").warning("conversion failed")
    assert [r.getMessage() for r in caplog.records] == ["conversion failed"]


def test_an_offline_neonize_daemon_mentions_ffmpeg_once_and_pair_names_its_error(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    """Two companies on two worker processes, each making a real (failing: no internet) connect,
    which is when neonize checks for ffmpeg: one line in the whole log, at INFO. Meanwhile
    ``wapool pair`` reports the connect failure the daemon recorded."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('a'), ('b')")
    env = {
        "PATH": str(_tools_dir(tmp_path / "bin")),  # no ffmpeg, whatever this machine has
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
        "WAPOOL_WHATSAPP_BACKEND": "neonize",
        "WAPOOL_COMPANIES_PER_WORKER": "1",
    }
    daemon = daemons.start(env)
    _until_both_failed_to_connect(database_url, daemon)
    pair = run_cli("pair", "a", "--timeout", "2", env=env, cwd=tmp_path)
    assert pair.returncode == 1
    assert "last error: " in pair.stderr
    assert "web.whatsapp.com" in pair.stderr  # neonize's own words: the DNS lookup failed
    doctor = run_cli("doctor", env=env, cwd=tmp_path).stdout.splitlines()
    assert [line for line in doctor if "ffmpeg" in line] == [
        "OK    ffmpeg (optional): ffmpeg and ffprobe not installed; needed for media "
        "conversions only (stickers, voice notes, video thumbnails)"
    ]
    assert daemon.stop() == 0
    mentions = [line for line in daemon.text().splitlines() if "ffmpeg" in line]
    assert len(mentions) == 1, mentions
    assert (
        " level=info logger=wapool.whatsapp.media_tools event=media_tools_missing " in mentions[0]
    )


def _until_both_failed_to_connect(url: str, daemon: Daemon) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert daemon.returncode is None, daemon.text()
        with psycopg.connect(url) as conn:
            failed = conn.execute(
                "SELECT count(*) FROM session_states WHERE last_error IS NOT NULL"
            ).fetchone()
        if failed == (2,):
            return
        assert time.monotonic() < deadline, daemon.text()
        time.sleep(0.2)
