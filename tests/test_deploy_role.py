"""The least-privilege role from deploy/ is enough to migrate and run wapool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from wapool.devdb import Cluster

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)


def test_wapool_needs_no_superuser(running_cluster: Cluster, tmp_path: Path) -> None:
    psql = running_cluster.bindir / "psql"
    subprocess.run(
        [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "password='role-pw'",
         "-d", running_cluster.url("postgres"), "-f", str(ROOT / "deploy/postgres-role.sql")],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    url = f"postgresql://wapool:role-pw@127.0.0.1:{running_cluster.port}/wapool"
    env = {"WAPOOL_DATABASE_URL": url, "WAPOOL_STATE_DIR": str(tmp_path)}
    migrated = run_cli("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    added = run_cli("company", "add", "962302", env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    listed = run_cli("company", "list", env=env, cwd=tmp_path)
    assert "962302" in listed.stdout
    # The role really is unprivileged.
    check = subprocess.run(
        [str(psql), "-X", "-At", "-d", url, "-c", "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"],
        check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.stdout.strip() == "f"
