"""deploy/install.sh against a temporary root: what it creates, with which modes; idempotent;
what it installs (deploy/requirements.lock, exact versions with hashes)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def _install(target: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"WAPOOL_INSTALL_ROOT": str(target), "WAPOOL_INSTALL_SKIP_PIP": "1"}
    return subprocess.run(["bash", str(ROOT / "deploy/install.sh"), *args], env=env | extra,
                          capture_output=True, text=True, timeout=100, check=False)  # fmt: skip


def _current(target: Path) -> str:
    link = target / "opt/wapool/venv"
    assert link.is_symlink()
    return Path(os.readlink(link)).parent.name


def _releases(target: Path) -> list[str]:
    return sorted(p.name for p in (target / "opt/wapool/releases").iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_a_temporary_root(tmp_path: Path) -> None:
    first = _install(tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "opt/wapool/venv/bin/python").exists()
    assert _releases(tmp_path) == [_current(tmp_path)]
    assert (tmp_path / "opt/wapool/README.md").read_text() == (ROOT / "README.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(p.name for p in (tmp_path / "opt/wapool/docs").iterdir()) == pages
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


def test_upgrade_switches_releases_and_rollback_goes_back(tmp_path: Path) -> None:
    installed = []
    for _ in range(2):
        assert _install(tmp_path).returncode == 0
        installed.append(_current(tmp_path))
    assert installed[0] < installed[1]
    python = tmp_path / "opt/wapool/venv/bin/python"
    prefix = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"],
                            capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    assert prefix.stdout.strip() == str(tmp_path / "opt/wapool/venv")  # scripts still valid

    back = _install(tmp_path, "--rollback")
    assert back.returncode == 0, back.stderr
    assert _current(tmp_path) == installed[0]
    assert "systemctl restart wapool" in back.stdout
    assert _install(tmp_path, "--rollback").returncode == 1  # nothing older
    assert _current(tmp_path) == installed[0]

    failed = _install(tmp_path, PYTHON="false")  # a build that fails changes nothing
    assert failed.returncode != 0
    assert _current(tmp_path) == installed[0]
    unfinished = tmp_path / "opt/wapool/releases/99990101T000000.000000000Z"
    (unfinished / "venv").mkdir(parents=True)  # as a pip failure half-way leaves it
    for _ in range(3):
        assert _install(tmp_path).returncode == 0
        installed.append(_current(tmp_path))
    assert not unfinished.exists()
    assert _releases(tmp_path) == installed[-3:]  # the three newest are kept
    assert _install(tmp_path, "--rollback").returncode == 0
    assert _current(tmp_path) == installed[-2]


def test_the_layout_before_releases_is_moved_aside(tmp_path: Path) -> None:
    old = tmp_path / "opt/wapool/venv"
    (old / "bin").mkdir(parents=True)
    result = _install(tmp_path)
    assert result.returncode == 0, result.stderr
    assert old.is_symlink()
    (aside,) = (tmp_path / "opt/wapool").glob("venv.replaced-*")
    assert (aside / "bin").is_dir()


LOCK = ROOT / "deploy/requirements.lock"


def _locked() -> dict[str, tuple[Requirement, list[str]]]:
    """The lock's entries that apply here: name -> (pinned requirement, hashes)."""
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    for block in re.split(r"\n(?=[^\s#])", LOCK.read_text()):  # one block per package
        if block.startswith("#"):
            continue
        pinned = Requirement(block.splitlines()[0].rstrip(" \\"))
        if pinned.marker is None or pinned.marker.evaluate():
            hashes = re.findall(r"--hash=sha256:[0-9a-f]{64}", block)
            entries[canonicalize_name(pinned.name)] = (pinned, hashes)
    return entries


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(r) for r in project["build-system"]["requires"]]
    locked = _locked()
    for requirement in wanted:  # `make lock` after changing a range, or this fails
        pinned, _ = locked[canonicalize_name(requirement.name)]
        (spec,) = pinned.specifier
        assert requirement.specifier.contains(spec.version), (requirement, spec)
    for name, (pinned, hashes) in locked.items():
        assert [spec.operator for spec in pinned.specifier] == ["=="], name
        assert hashes, f"{name} has no hash"


def test_the_install_takes_exactly_the_lock(tmp_path: Path) -> None:
    calls = tmp_path / "pip-calls"
    fake_python = tmp_path / "python"  # `python -m venv DIR` making a pip that records its calls
    fake_python.write_text(
        '#!/bin/sh\n[ "$1 $2" = "-m venv" ] || exit 2\nmkdir -p "$3/bin"\n'
        f'printf \'#!/bin/sh\\necho "$*" >> {calls}\\n\' > "$3/bin/pip"\n'
        'chmod +x "$3/bin/pip"\n'
    )
    fake_python.chmod(0o755)
    env = os.environ | {"WAPOOL_INSTALL_ROOT": str(tmp_path / "root"), "PYTHON": str(fake_python)}
    result = subprocess.run(["bash", str(ROOT / "deploy/install.sh")], env=env,
                            capture_output=True, text=True, timeout=100, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        f"install --quiet --require-hashes -r {LOCK}",
        f"install --quiet --no-deps --no-build-isolation {ROOT}",
        "check",
    ]


def test_the_suite_runs_against_the_locked_versions() -> None:
    build_tools = {"pip", "setuptools"}  # the venv's own; the lock pins them for servers
    for name, (pinned, _) in _locked().items():
        if name in build_tools:
            continue
        (spec,) = pinned.specifier
        assert version(name) == spec.version, f"{name}: stale virtualenv, run `make venv`"


@pytest.mark.skipif(not os.environ.get("WAPOOL_SLOW"), reason="downloads packages: WAPOOL_SLOW=1")
@pytest.mark.timeout(600)
def test_a_real_install_from_the_lock(tmp_path: Path) -> None:
    env = os.environ | {"WAPOOL_INSTALL_ROOT": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / "deploy/install.sh")], env=env,
                            capture_output=True, text=True, timeout=580, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    doctor = subprocess.run([str(tmp_path / "opt/wapool/venv/bin/wapool"), "--help"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert doctor.returncode == 0, doctor.stderr
