"""The development database behind ``make run``: started when no URL is configured, migrated,
and stopped together with the daemon on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemons, scrubbed_env
from wapool.db.migrations import latest_version
from wapool.devdb import Cluster, ClusterError, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def devdb_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="wapool-devdb-test-"))
    root.chmod(0o755)
    yield root / "devdb"
    Cluster(root / "devdb", 1).stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


def test_ctrl_c_stops_daemon_and_dev_cluster(
    devdb_dir: Path, tmp_path: Path, daemons: Daemons
) -> None:
    port = free_port()
    env = {
        "WAPOOL_DEVDB_DIR": str(devdb_dir),
        "WAPOOL_DEVDB_PORT": str(port),
        "WAPOOL_STATE_DIR": str(tmp_path / "state"),
    }
    wapool = f"{sys.executable} -m wapool"
    command = [sys.executable, "-m", "wapool.devdb", "run", "--", "sh", "-c",
               f"{wapool} migrate && exec {wapool} run"]  # fmt: skip
    daemon = daemons.start(env, command=command, new_session=True)
    lines = daemon.wait_for("event=daemon_ready", timeout=60)
    assert (
        f"devdb: using the development cluster at postgresql://postgres@127.0.0.1:{port}/wapool"
        in lines
    )
    cluster = Cluster(devdb_dir, port)
    assert cluster.running()
    if os.geteuid() == 0:
        assert (devdb_dir / "data").owner() == "postgres"
    # What Ctrl-C does: SIGINT to the whole foreground group (the daemon has a session of its own).
    returncode = daemon.stop(signal.SIGINT, timeout=60)
    out, err = daemon.stdout(), daemon.rest()
    assert returncode == 0, err
    assert f"migrated to version {latest_version()}" in out
    assert "event=daemon_stopped" in err
    assert "devdb: development cluster stopped" in err
    assert not cluster.running()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_unreachable_folder_is_a_clear_error(tmp_path: Path) -> None:
    private = tmp_path / "private"  # pytest's temp folders are 0700
    with pytest.raises(ClusterError, match=r"the postgres user cannot reach .*WAPOOL_DEVDB_DIR"):
        Cluster(private / "devdb", free_port()).start()


def test_configured_url_is_used_as_is(devdb_dir: Path, tmp_path: Path) -> None:
    env = scrubbed_env(
        {"WAPOOL_DEVDB_DIR": str(devdb_dir), "WAPOOL_DATABASE_URL": "postgresql://elsewhere/db"}
    )
    result = subprocess.run(
        [sys.executable, "-m", "wapool.devdb", "run", "--", "sh", "-c", 'echo "$WAPOOL_DATABASE_URL"'],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, "postgresql://elsewhere/db")
    assert not devdb_dir.exists()
