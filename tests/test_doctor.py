"""``wapool doctor`` against the real test database and a real state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.timeout(120)


def test_all_checks_pass_then_failures_are_named(
    database_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(state)}
    good = run_cli("doctor", env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stdout
    assert [line.split(":")[0] for line in good.stdout.splitlines()[:-1]] == [
        "OK    settings", "OK    postgresql reachable", "OK    postgresql migrated",
        "OK    role privileges", "OK    master key", "OK    state directory",
        "OK    store leftovers",
        "OK    neonize library", "OK    libmagic", "OK    ffmpeg (optional)",
    ]  # fmt: skip
    assert good.stdout.splitlines()[-1] == "all checks passed"

    state.chmod(0o755)
    bad = run_cli("doctor", env=env | {"WAPOOL_DATABASE_URL": empty_database_url}, cwd=tmp_path)
    assert bad.returncode == 1
    failed = [line for line in bad.stdout.splitlines() if line.startswith("FAIL")]
    assert failed[0].startswith("FAIL  postgresql migrated: database schema is at version 0")
    assert any(line.startswith("FAIL  state directory:") and "0o755" in line for line in failed)
    assert bad.stdout.splitlines()[-1].endswith("check(s) failed")
