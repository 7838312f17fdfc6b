"""Looking at a working store before it is used: sound, missing, proven corrupt, or unreadable
for now (see ``faults``). Looking never changes the file: it is opened read-only."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from wapool.store import changelog
from wapool.store.faults import SQLITE_ERRORS, Fault, StoreFault, as_fault
from wapool.store.working_store import get_meta, quick_check, read_only


@dataclass(frozen=True)
class LocalState:
    #: None when the store is sound.
    fault: Fault | None
    store_uuid: str | None = None
    last_seq: int = 0
    detail: str | None = None

    @property
    def usable(self) -> bool:
        return self.fault is None

    @property
    def problem(self) -> str | None:
        """``missing``, ``corrupt: ...``, ``unreadable: ...`` or ``full: ...`` (None: sound)."""
        if self.fault is None or self.fault is Fault.MISSING:
            return None if self.fault is None else "missing"
        return f"{self.fault.value}: {self.detail}"


def inspect_local(path: Path) -> LocalState:
    try:
        quick_check(path)
        with closing(read_only(path)) as conn:
            if not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'wapool_meta'"
            ).fetchone():
                return LocalState(None)
            return LocalState(None, get_meta(conn, "store_uuid"), changelog.last_seq(conn))
    except (StoreFault, *SQLITE_ERRORS, OSError) as exc:
        fault = as_fault(exc, path)
        return LocalState(fault.fault, detail=fault.detail)
