"""Third-party toolchains the adopt tests run, built once and cached by version.

* old neonize wheels (``0.4.3.post0``, ``0.3.18.post0``) in throwaway virtualenvs, to write
  whatsmeow stores in their schemas;
* Baileys (and node-postgres for ``tools/baileys-dump.mjs``) from npm, to write auth states.

Each lives in ``$WAPOOL_TEST_CACHE`` (default ``/var/tmp/wapool-test-cache``) under a name that
carries every version it depends on (package, Python or Node), and counts only once its
``.complete`` stamp exists: an interrupted or stale build is never used. A build that fails
skips the test only when the registry is unreachable (checked separately); any other failure
fails the test.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("WAPOOL_TEST_CACHE", "/var/tmp/wapool-test-cache"))
OLD_NEONIZE = ("0.4.3.post0", "0.3.18.post0")
BAILEYS = "7.0.0-rc14"
NODE_POSTGRES = "8.23.1"
INSTALL_TIMEOUT = 600


def old_neonize(version: str) -> Path:
    """The python of a virtualenv holding ``neonize==version``."""
    py = "py" + ".".join(map(str, sys.version_info[:3]))
    target = CACHE / f"neonize-{version}-{py}"

    def make(temp: Path) -> None:
        _run([sys.executable, "-m", "venv", str(temp)], "pypi")
        _run(
            [str(temp / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
             f"neonize=={version}"],
            "pypi",
        )  # fmt: skip

    _ensure(target, make, target / "bin" / "python")
    return target / "bin" / "python"


def node_modules() -> Path:
    """A node_modules folder with Baileys and node-postgres."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed (.ci/run installs them)")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    major = node.stdout.strip().lstrip("v").split(".")[0]
    target = CACHE / f"baileys-{BAILEYS}-pg-{NODE_POSTGRES}-node{major}"

    def make(temp: Path) -> None:
        temp.mkdir()
        _run(
            ["npm", "install", "--prefix", str(temp), "--no-audit", "--no-fund", "--silent",
             f"baileys@{BAILEYS}", f"pg@{NODE_POSTGRES}"],
            "npm",
        )  # fmt: skip

    _ensure(target, make, target / "node_modules" / "baileys" / "package.json")
    return target / "node_modules"


def _ensure(target: Path, make: Callable[[Path], None], product: Path) -> None:
    """Build ``target`` once (under a lock: parallel runs wait), where it will stay (a
    virtualenv records its own path); the stamp, written last, marks it complete, and a build
    whose ``product`` has gone (or whose interpreter has) is made again."""
    stamp = target / ".complete"
    if _usable(stamp, product):
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE / f".{target.name}.lock"):
        if _usable(stamp, product):
            return
        shutil.rmtree(target, ignore_errors=True)
        try:
            make(target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        stamp.write_text(target.name + "\n")


def _usable(stamp: Path, product: Path) -> bool:
    return stamp.exists() and product.exists() and product.resolve().exists()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(command: list[str], registry: str) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    if result.returncode == 0:
        return
    if not _reachable(registry):
        pytest.skip(f"the {registry} registry is unreachable: cannot install {command[-1]}")
    tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    pytest.fail(f"installing {command[-1]} failed: {' | '.join(tail)}")


def _reachable(registry: str) -> bool:
    if registry == "npm":
        probe = ["npm", "ping"]
    else:
        probe = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                 "--disable-pip-version-check", "-d", tempfile.mkdtemp(), "six"]  # fmt: skip
    try:
        return subprocess.run(probe, capture_output=True, timeout=60, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False
