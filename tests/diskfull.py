"""A state directory whose disk can be filled up and freed again, for full-disk tests.

As root where mounting is permitted: a small tmpfs mounted on the directory; ``fill`` writes a
filler file until ``ENOSPC``, ``free`` deletes it. Elsewhere (a container without the right to
mount, or with ``TESTS_FULL_DISK_BY=rlimit``): a file-size limit (``RLIMIT_FSIZE``) on every
process of the daemon; writes past it fail with ``EFBIG`` (SQLite says "disk I/O error" where a
full disk says "database or disk is full"; the daemon's space probe calls both full), and
``free`` lifts it again. The daemon's log must then not be a file it writes itself
(``RigDaemon`` pipes it), or the limit would silence it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20
#: With the file-size limit: any write past this offset fails (the header page still works).
LIMIT_BYTES = 4096


class SmallDisk:
    def __init__(self, path: Path, size_mb: int = 32, owner: int | None = None) -> None:
        self.path = path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.mounted = _mount(path, size_mb)
        if owner is not None:
            os.chown(path, owner, owner)
        path.chmod(0o700)
        self._filler = path / "filler"

    def fill(self, pids: Iterable[int]) -> None:
        if not self.mounted:
            _limit(pids, str(LIMIT_BYTES))
            return
        fd = os.open(self._filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            for size in (CHUNK, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, bytes(size))
        finally:
            os.close(fd)

    def free(self, pids: Iterable[int]) -> None:
        if not self.mounted:
            _limit(pids, "unlimited")
            return
        self._filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False


def _mount(path: Path, size_mb: int) -> bool:
    if os.environ.get("TESTS_FULL_DISK_BY") == "rlimit" or os.geteuid() != 0:
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
        capture_output=True, check=False,
    )  # fmt: skip
    return result.returncode == 0


def _limit(pids: Iterable[int], soft: str) -> None:
    for pid in pids:
        try:
            subprocess.run(
                ["prlimit", f"--pid={pid}", f"--fsize={soft}:unlimited"],
                capture_output=True, check=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            if b"No such process" not in exc.stderr:
                raise
