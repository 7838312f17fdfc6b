"""deploy/install.sh against a temporary root: what it creates, with which modes; idempotent."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def _install(target: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"WAPOOL_INSTALL_ROOT": str(target), "WAPOOL_INSTALL_SKIP_PIP": "1"}
    return subprocess.run(["bash", str(ROOT / "deploy/install.sh")], env=env,
                          capture_output=True, text=True, timeout=100, check=False)  # fmt: skip


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_a_temporary_root(tmp_path: Path) -> None:
    first = _install(tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "opt/wapool/venv/bin/python").exists()
    assert (tmp_path / "opt/wapool/README.md").read_text() == (ROOT / "README.md").read_text()
    env_file = tmp_path / "etc/wapool/wapool.env"
    assert env_file.read_text() == (ROOT / ".env.example").read_text()
    assert _mode(env_file) == 0o640
    assert _mode(tmp_path / "etc/wapool") == 0o750
    unit = tmp_path / "etc/systemd/system/wapool.service"
    assert unit.read_text() == (ROOT / "systemd/wapool.service").read_text()
    assert _mode(tmp_path / "var/lib/wapool") == 0o700
    assert "wrote" in first.stdout

    env_file.write_text("WAPOOL_DATABASE_URL=postgresql://wapool@db/wapool\n")
    second = _install(tmp_path)  # an upgrade: the operator's settings survive
    assert second.returncode == 0, second.stderr
    assert env_file.read_text() == "WAPOOL_DATABASE_URL=postgresql://wapool@db/wapool\n"
    assert "kept existing" in second.stdout
