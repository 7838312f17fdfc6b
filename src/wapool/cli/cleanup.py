"""``wapool cleanup [--dry-run] [--company ID]``: the expired-key cleanup, now or as a preview."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from wapool.cleanup import postgres
from wapool.cleanup.executor import RunResult
from wapool.cleanup.service import CleanupService
from wapool.cleanup.telegram import TelegramNotifier
from wapool.cli.database import open_database
from wapool.errors import ExitCode, WapoolError
from wapool.registry.company import validate_company_id
from wapool.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "cleanup", help="delete expired key material now (--dry-run: only show what would go)"
    )
    parser.add_argument("--dry-run", action="store_true", help="change nothing; print the plan")
    parser.add_argument("--company", metavar="ID", help="only this company")
    parser.set_defaults(handler=_cleanup)


async def _cleanup(settings: Settings, args: argparse.Namespace) -> int:
    if args.company:
        validate_company_id(args.company)
    async with open_database(settings) as db:
        service = CleanupService(db, settings, notifier=TelegramNotifier.from_settings(settings))
        if args.dry_run:
            now = datetime.now(UTC)
            cutoffs = {t: service.policy.cutoff(t, now) for t in service.policy.tables}
            plan = await postgres.plan(
                db, cutoffs, service.policy.removed_cutoff(now), args.company
            )
            print(plan_table(plan))
            return ExitCode.OK
        bar = ProgressBar() if sys.stderr.isatty() else None
        result = await service.run(company_id=args.company, progress=bar.update if bar else None)
        if bar:
            bar.close()
    if result is None:
        raise WapoolError("another wapool is running the cleanup now; try again later")
    print(result_table(result))
    return ExitCode.OK if result.status == "done" else ExitCode.FAILURE


def plan_table(plan: list[postgres.PlanRow]) -> str:
    lines = [f"{'COMPANY':<24} {'TABLE':<34} {'ROWS':>12} {'BYTES':>14}"]
    lines += [f"{r.company_id:<24} {r.table:<34} {r.rows:>12,} {r.bytes:>14,}" for r in plan]
    total_rows, total_bytes = sum(r.rows for r in plan), sum(r.bytes for r in plan)
    lines.append(f"{'total (dry run: nothing deleted)':<59} {total_rows:>12,} {total_bytes:>14,}")
    return "\n".join(lines)


def result_table(result: RunResult) -> str:
    lines = [f"{'COMPANY':<24} {'TABLE':<34} {'ROWS':>12} {'BYTES':>14}"]
    for (company, table), (rows, size) in sorted(result.deleted.items()):
        if rows:
            lines.append(f"{company:<24} {table:<34} {rows:>12,} {size:>14,}")
    lines.append(
        f"cleanup {result.status}: {result.rows:,} rows, {result.bytes:,} bytes in "
        f"{result.duration_seconds:.1f} s (longest store lock "
        f"{result.longest_lock_seconds * 1000:.0f} ms)"
    )
    if result.error:
        lines.append(f"error: {result.error}")
    return "\n".join(lines)


class ProgressBar:
    """One line on the terminal, rewritten in place."""

    def __init__(self) -> None:
        self._shown = ""

    def update(self, company: str, table: str, rows: int) -> None:
        text = f"\r{company} {table}: {rows:,} rows deleted"
        if text != self._shown:
            sys.stderr.write(text.ljust(len(self._shown)))
            sys.stderr.flush()
            self._shown = text

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
