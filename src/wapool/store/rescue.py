"""Before a working store is replaced: save what it owes PostgreSQL, name what cannot be saved.

Invariant 7: no local fault silently drops an acknowledged change. When provisioning is about
to replace a store that may hold change-log entries after the PostgreSQL copy's
``applied_seq`` (a corrupt store, or one of another store identity), ``rescue``:

1. reads what it still can (``salvage.read_salvage``);
2. applies the readable entries to PostgreSQL, as the mirror would (same store identity only,
   under the lease fence); a refusal stops the replacement (``RescueRefused``);
3. writes a report beside the copy that is about to be kept
   (``store.db.replaced-<time>.salvage.json``) and alerts: a warning when everything was saved,
   an error naming the sequence ranges and keys that could not be.

The report is written before the store is replaced: a crash in between leaves a report without
a copy (a false alarm), never a lost change without a report.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wapool.db.pool import Database
from wapool.errors import WapoolError
from wapool.leases import Fence
from wapool.observability import alerts
from wapool.store import pg_copy
from wapool.store.leftovers import REPORT_SUFFIX
from wapool.store.salvage import Salvage, read_salvage
from wapool.store.schema import StoreSchema


class RescueRefused(WapoolError):
    """PostgreSQL refused the salvaged changes (lease lost, copy replaced meanwhile)."""


@dataclass(frozen=True)
class Report:
    company_id: str
    #: The replaced copy this report describes (file name, in the company's folder).
    kept_as: str
    reason: str
    saved: int
    lost: list[tuple[int, int | None]] = field(default_factory=list)
    lost_keys: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    #: The lost entries were readable but kept aside on purpose (a lease taken over: they
    #: must never be applied over the new holder's copy).
    aside: bool = False

    @property
    def complete(self) -> bool:
        return not self.lost and not self.lost_keys

    def describe(self) -> str:
        parts = [f"{self.saved} change-log entries saved to PostgreSQL"]
        if self.lost:
            ranges = ", ".join(f"{a}-{b if b is not None else ''}" for a, b in self.lost)
            how = "were kept aside, not applied" if self.aside else "could not be read"
            parts.append(f"entries with sequence numbers {ranges} {how}")
        if self.lost_keys:
            keys = ", ".join(f"{t} {k}" for t, k in self.lost_keys[:20])
            more = f" and {len(self.lost_keys) - 20} more" if len(self.lost_keys) > 20 else ""
            parts.append(f"rows that could not be read: {keys}{more}")
        return "; ".join(parts) + f" (kept as {self.kept_as})"


def read_report(path: Path) -> Report:
    data = json.loads(path.read_text())
    return Report(
        data["company_id"], data["kept_as"], data["reason"], int(data["saved"]),
        [(int(a), None if b is None else int(b)) for a, b in data["lost"]],
        [(str(t), str(k)) for t, k in data["lost_keys"]], data.get("error"),
        bool(data.get("aside", False)),
    )  # fmt: skip


async def read(path: Path, meta: pg_copy.CopyMeta | None) -> Salvage:
    """What the store at ``path`` holds after the copy's ``applied_seq``."""
    return await asyncio.to_thread(read_salvage, path, meta.applied_seq if meta else 0)


async def rescue(
    db: Database,
    company_id: str,
    salvage: Salvage,
    meta: pg_copy.CopyMeta | None,
    keep_as: Path,
    reason: str,
    fence: Fence | None = None,
) -> Report | None:
    """Save what a store owes the copy ``meta`` (``salvage``, see ``read``) before it is kept as
    ``keep_as``; None when it owed nothing."""
    if not salvage.owed:
        return None
    saved, lost = await _save(db, company_id, salvage, meta, fence)
    report = Report(
        company_id, keep_as.name, reason, saved, lost + salvage.lost, salvage.lost_keys,
        salvage.error,
    )  # fmt: skip
    await asyncio.to_thread(write_report, keep_as.with_name(keep_as.name + REPORT_SUFFIX), report)
    if report.complete:
        alerts.store_salvaged(company_id, report.describe())
    else:
        alerts.changes_lost(company_id, report.describe())
    return report


async def _save(
    db: Database,
    company_id: str,
    salvage: Salvage,
    meta: pg_copy.CopyMeta | None,
    fence: Fence | None,
) -> tuple[int, list[tuple[int, int | None]]]:
    """Apply the readable entries; returns (entries saved, ranges that could not be)."""
    if not salvage.entries:
        return 0, []
    span: list[tuple[int, int | None]] = [(salvage.entries[0].seq, salvage.entries[-1].seq)]
    if meta is not None and salvage.store_uuid not in (None, meta.store_uuid):
        return 0, span  # another store's log: PostgreSQL's copy is not its copy
    # The entries' own schema if it can be read (an upgrade may not have reached the copy yet).
    schema = salvage.schema or (_schema(meta) if meta is not None else None)
    if schema is None:
        return 0, span  # no copy to add to, and no schema to create one with
    salvage.store_uuid = meta.store_uuid if meta else salvage.store_uuid or str(uuid.uuid4())
    saved = 0
    for prefix in salvage.prefixes(schema.fingerprint):
        batch = pg_copy.Batch(company_id, prefix, schema)
        outcome = await pg_copy.apply(
            db, [batch], timeout=db.query_timeout + len(prefix.changes) / 20_000, fence=fence
        )
        if company_id in outcome.rejected:
            raise RescueRefused(f"PostgreSQL refused the salvaged changes of {company_id}: "
                                f"{outcome.rejected[company_id]}")  # fmt: skip
        saved += prefix.entries
    return saved, []


def _schema(meta: pg_copy.CopyMeta) -> StoreSchema:
    """The copy's schema as the mirror would send it (same fingerprint: only the sequence
    moves)."""
    ddl = tuple(meta.schema_ddl.split(pg_copy.DDL_SEPARATOR))
    return StoreSchema(tables=(), ddl=ddl, version=meta.schema_version)


def write_report(path: Path, report: Report) -> None:
    text = json.dumps(asdict(report), indent=1)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
