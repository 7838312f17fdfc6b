"""The run's summary: one Sentry event (an error when the run failed) and the Telegram text."""

from __future__ import annotations

import logging
from typing import Literal

import sentry_sdk
from sentry_sdk.integrations.logging import ignore_logger

from wapool.cleanup.executor import RunResult
from wapool.cleanup.sizes import SizeRow

log = logging.getLogger("wapool.cleanup.report")
ignore_logger(log.name)  # Sentry gets the event itself, below


def to_sentry(result: RunResult) -> None:
    level: Literal["error", "info"] = "error" if result.status == "failed" else "info"
    message = "cleanup_failed" if result.status == "failed" else "cleanup_finished"
    extra = {
        "status": result.status,
        "deleted_rows": result.rows,
        "deleted_bytes": result.bytes,
        "duration_seconds": round(result.duration_seconds, 1),
        "longest_lock_ms": round(result.longest_lock_seconds * 1000, 1),
        # [company, table, rows, bytes]: table names must not be extra keys (scrubbed as keys)
        "per_table": [[c, t, r, b] for (c, t), (r, b) in sorted(result.deleted.items()) if r],
        "error": result.error,
    }
    log.log(logging.ERROR if level == "error" else logging.INFO, message, extra=extra)
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("component", "cleanup")
        for key, value in extra.items():
            scope.set_extra(key, value)
        sentry_sdk.capture_message(message, level=level)


def summary_text(result: RunResult, sizes: list[SizeRow]) -> str:
    """Plain text for Telegram: what went, how long it took, sizes and weekly growth."""
    head = "✅" if result.status == "done" else "❌"
    lines = [
        f"{head} wapool cleanup {result.status}: {result.rows:,} rows, "
        f"{_mb(result.bytes)} deleted in {result.duration_seconds:.1f} s",
    ]
    if result.error:
        lines.append(f"error: {result.error}")
    by_table: dict[str, int] = {}
    for (_, table), (rows, _) in result.deleted.items():
        by_table[table] = by_table.get(table, 0) + rows
    lines += [f"  {table}: {rows:,}" for table, rows in sorted(by_table.items()) if rows]
    if sizes:
        total = sum(s.bytes for s in sizes)
        week = [s for s in sizes if s.week_ago_bytes is not None]
        growth = ""
        if week:
            before = sum(s.week_ago_bytes or 0 for s in week)
            now = sum(s.bytes for s in week)
            growth = f" ({'+' if now >= before else '-'}{_mb(abs(now - before))} since last week)"
        lines.append(f"database: {sum(s.rows for s in sizes):,} rows, {_mb(total)}{growth}")
        for size in sorted(sizes, key=lambda s: -s.bytes)[:5]:
            lines.append(f"  {size.company_id} {size.table}: {size.rows:,} rows, {_mb(size.bytes)}")
    return "\n".join(lines)


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"
