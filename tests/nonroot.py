"""Running wapool as a user other than root, where file permissions matter (root bypasses them).

The test suite runs as root, and its Python (and often its checkout: CI clones under /root)
cannot be reached by anyone else. So ``nonroot_python`` builds, once per version of the
project, an interpreter that user ``nobody`` can run:

* a virtualenv made by Debian's own ``/usr/bin/python3 -m venv`` under ``/var/tmp`` (readable
  by all) holding the dependencies, keyed by a hash of ``pyproject.toml`` (about a minute the
  first time, from the configured pip index);
* a *copy* of the project installed (not editable) into a folder of its own, keyed by a hash of
  ``pyproject.toml`` and ``src/`` (seconds), put on ``PYTHONPATH`` by ``NonRoot.env``.

``NonRoot.command`` runs a command as ``nobody`` through ``setpriv``; ``workdir`` makes a folder
that user owns. Builds are serialised with a lock file, so parallel runs share them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CACHE = Path("/var/tmp/wapool-nonroot")
SYSTEM_PYTHON = "/usr/bin/python3"
UID = GID = 65534  # nobody / nogroup
BUILD_TIMEOUT = 900
STALE_SECONDS = 86_400


@dataclass(frozen=True)
class NonRoot:
    python: Path
    site: Path

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for the copy: no WAPOOL_ setting of ours, the copy on the path."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WAPOOL_", "PYTHON", "VIRTUAL_ENV"))
        }
        return base | {"PYTHONPATH": str(self.site), "HOME": "/nonexistent"} | dict(extra or {})

    def command(self, *args: str) -> list[str]:
        """``python ARGS`` as user nobody."""
        return as_nobody(str(self.python), *args)


def as_nobody(*command: str) -> list[str]:
    return [
        "setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--", *command,
    ]  # fmt: skip


def nonroot_python() -> NonRoot:
    CACHE.mkdir(mode=0o755, exist_ok=True)
    CACHE.chmod(0o755)
    with _locked(CACHE / ".lock"):
        venv = _deps_venv(_digest([PROJECT / "pyproject.toml"]))
        site = _project_copy(venv, _digest([PROJECT / "pyproject.toml", *_sources()]))
        for used in (venv, site.parent):
            os.utime(used)  # in use: not stale
        _prune({venv, site.parent})
    return NonRoot(venv / "bin" / "python", site)


def workdir(prefix: str) -> Path:
    """A fresh folder under the cache, owned by nobody, that nobody can reach."""
    runs = CACHE / "runs"
    runs.mkdir(mode=0o755, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=runs))
    path.chmod(0o755)
    os.chown(path, UID, GID)
    return path


def _deps_venv(key: str) -> Path:
    venv = CACHE / f"deps-{key}"
    if (venv / ".ready").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=BUILD_TIMEOUT)
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    _pip(venv, "install", "--quiet", *wanted)
    (venv / ".ready").touch()
    return venv


def _project_copy(venv: Path, key: str) -> Path:
    target = CACHE / f"project-{key}"
    if (target / ".ready").exists():
        return target / "site"
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        copy = Path(scratch) / "wapool"
        shutil.copytree(
            PROJECT / "src",
            copy / "src",
            ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"),
        )
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(PROJECT / name, copy / name)
        _pip(venv, "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--target", str(target / "site"), str(copy))  # fmt: skip
    for path in (target, *target.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (target / ".ready").touch()
    return target / "site"


def _prune(current: set[Path]) -> None:
    """Builds for other versions of the project, not used for a day, go."""
    for old in [*CACHE.glob("deps-*"), *CACHE.glob("project-*")]:
        if old not in current and time.time() - old.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(old, ignore_errors=True)


def _pip(venv: Path, *args: str) -> None:
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
        check=True, timeout=BUILD_TIMEOUT, cwd=CACHE,
    )  # fmt: skip


def _sources() -> list[Path]:
    return sorted(
        p for p in (PROJECT / "src").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    )  # fmt: skip


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(PROJECT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
