"""Watching the free space of the state directory, where the change logs wait out outages.

While PostgreSQL is down every change waits on this disk, never dropped; a full disk would make
whatsmeow's own writes fail. One warning goes out when the space runs low, and one more only
after it has recovered and run low again.

``can_write`` is how a client stopped by a full disk knows it may run again: the free-space
figure alone can say "some" while the next write still fails (a tmpfs, quotas, a file-size
limit), so it writes a real megabyte and removes it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from wapool.observability import alerts

#: Warn when the state directory has less than this fraction, or this many bytes, free.
LOW_DISK_FRACTION = 0.10
LOW_DISK_BYTES = 1 << 30
#: What ``can_write`` writes to prove there is room again.
PROBE_BYTES = 1 << 20
PROBE_NAME = ".space-probe"


def can_write(directory: Path, size: int = PROBE_BYTES) -> OSError | None:
    """Write and remove ``size`` bytes in ``directory``; the error if that fails."""
    probe = directory / PROBE_NAME
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            left = memoryview(bytes(size))
            while left:  # a write near the limit is short; the next one fails
                left = left[os.write(fd, left) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    finally:
        probe.unlink(missing_ok=True)
    return None


class DiskWatch:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._warned = False

    def check(self) -> bool:
        """Look at the free space now, warn if it just ran low; True while it is low."""
        usage = shutil.disk_usage(self.state_dir)
        fraction = usage.free / usage.total if usage.total else 1.0
        low = fraction < LOW_DISK_FRACTION or usage.free < LOW_DISK_BYTES
        if low and not self._warned:
            alerts.disk_low(str(self.state_dir), usage.free, fraction)
        self._warned = low
        return low
