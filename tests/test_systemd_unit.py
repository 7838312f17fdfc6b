"""The unit file as systemd itself judges it (offline): no warnings, exposure <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "wapool.service"

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing"),
]


def _local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's wapool (verify checks it exists)."""
    wapool = Path(sys.executable).parent / "wapool"
    assert wapool.exists()
    text = UNIT.read_text().replace("/opt/wapool/venv/bin/wapool", str(wapool))
    copy = tmp_path / "wapool.service"
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(_local_copy(tmp_path))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_security_exposure_is_two_or_less(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_local_copy(tmp_path))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for wapool\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_matches_the_daemon() -> None:
    text = UNIT.read_text()
    assert "Type=notify" in text
    assert "RestartPreventExitStatus=78 65 66 77" in text
    stop = int(re.search(r"TimeoutStopSec=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert stop >= 15 + 10 + 5  # clients (15 s) + last drain (10 s) + slack
