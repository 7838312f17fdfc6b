"""Files a working store leaves beside itself, and how long each may stay. All of them hold the
account's private keys, so none stays unaccounted for.

* ``store.db.replaced-<UTC time>`` (with its ``-wal``/``-shm`` and, when provisioning had to
  save or name changes, its ``.salvage.json`` report): a store a restore replaced. It may be an
  operator's last resort, so it is kept for the key retention period
  (``WAPOOL_KEY_RETENTION_DAYS``), listed by ``wapool status`` and ``wapool doctor``, and
  removed by the cleanup after that.
* ``store.db.restoring-<pid>`` (with ``-journal``/``-wal``/``-shm``): a restore in progress;
  ``store.db.adopting-<pid>``: a ``wapool adopt`` building the store. Each is removed on every
  path; one left by a process that died (a kill) is removed the next time the store is
  provisioned.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIXES = ("", "-journal", "-wal", "-shm")
REPORT_SUFFIX = ".salvage.json"
_REPLACED = re.compile(
    r"^store\.db\.replaced-(?P<stamp>\d{8}T\d{6}(?:\.\d{1,6})?Z)(?P<part>-wal|-shm|\.salvage\.json)?$"
)
_RESTORING = re.compile(r"^store\.db\.(?:restoring|adopting)-(?P<pid>\d+)(?:-journal|-wal|-shm)?$")


@dataclass(frozen=True)
class Replaced:
    """A replaced store kept aside: its main file, when it was replaced, every file of it."""

    company_id: str
    path: Path
    replaced_at: datetime
    files: tuple[Path, ...]

    @property
    def size(self) -> int:
        return sum(_size(f) for f in self.files)

    @property
    def report(self) -> Path | None:
        report = self.path.with_name(self.path.name + REPORT_SUFFIX)
        return report if report in self.files else None


def remove_file_set(path: Path) -> None:
    """Remove ``path`` and SQLite's companions of it (journal, WAL, shared memory)."""
    for suffix in SUFFIXES:
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def replaced_copies(state_dir: Path) -> list[Replaced]:
    """Every replaced store under ``state_dir``, oldest first (unreadable folders skipped)."""
    groups: dict[Path, list[Path]] = {}
    for directory in _company_dirs(state_dir):
        for entry in _entries(directory):
            match = _REPLACED.match(entry.name)
            if match:
                main = entry.with_name(entry.name.removesuffix(match.group("part") or ""))
                groups.setdefault(main, []).append(entry)
    found = [
        Replaced(main.parent.name, main, _parse(main.name), tuple(sorted(files)))
        for main, files in groups.items()
    ]
    return sorted(found, key=lambda r: (r.replaced_at, r.company_id))


def prune_replaced(
    state_dir: Path, older_than: datetime, company_id: str | None = None
) -> list[Replaced]:
    """Remove the replaced stores kept since before ``older_than``; return them."""
    pruned = [
        r
        for r in replaced_copies(state_dir)
        if r.replaced_at < older_than and company_id in (None, r.company_id)
    ]
    for replaced in pruned:
        for file in replaced.files:
            file.unlink(missing_ok=True)
        log.info(
            "replaced_store_pruned",
            extra={"company": replaced.company_id, "file": replaced.path.name},
        )
    return pruned


def stale_temporaries(directory: Path) -> list[Path]:
    """Restore temporaries in a company's folder whose process is gone."""
    return sorted(
        entry
        for entry in _entries(directory)
        if (match := _RESTORING.match(entry.name)) and not alive(int(match.group("pid")))
    )


def remove_stale_temporaries(directory: Path) -> list[Path]:
    removed = stale_temporaries(directory)
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.warning(
            "restore_leftovers_removed",
            extra={"company": directory.name, "files": ",".join(p.name for p in removed)},
        )
    return removed


def _parse(name: str) -> datetime:
    stamp = name.rsplit("replaced-", 1)[1].removesuffix("Z")
    fmt = "%Y%m%dT%H%M%S.%f" if "." in stamp else "%Y%m%dT%H%M%S"
    return datetime.strptime(stamp, fmt).replace(tzinfo=UTC)


def _company_dirs(state_dir: Path) -> list[Path]:
    return sorted(p for p in _entries(state_dir) if p.is_dir())


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
