"""``wapool status [--json]``: every company's session and mirror state, from any host.

Session states come from what the driving daemon last recorded in PostgreSQL; the mirror lag
and pending rows are read from the working stores on this host (``-`` when it has none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from wapool.cli.database import open_database
from wapool.cli.table import render
from wapool.settings import Settings
from wapool.store import changelog
from wapool.store.working_store import connection, store_path


def register(commands: Any) -> None:
    parser = commands.add_parser("status", help="sessions and mirror state of every company")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_status)


def _local(path: Path) -> tuple[int, float] | None:
    """(pending rows, lag seconds) of a working store on this host."""
    if not path.exists():
        return None
    with connection(path) as conn:
        pending = changelog.pending(conn)
    lag = max(0.0, time.time() - pending.oldest_at) if pending.oldest_at else 0.0
    return pending.rows, lag


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        rows = await db.fetch(
            "SELECT c.id, c.enabled, c.paired_jid, s.state, s.since, s.last_error, s.holder "
            "FROM companies c LEFT JOIN session_states s ON s.company_id = c.id "
            "WHERE c.removed_at IS NULL ORDER BY c.id"
        )
    report = []
    for company, enabled, jid, state, since, error, holder in rows:
        local = await asyncio.to_thread(_local, store_path(settings.state_dir, company))
        report.append(
            {
                "company": company,
                "state": state or ("disabled" if not enabled else "unknown"),
                "since": since.isoformat() if isinstance(since, datetime) else None,
                "paired_jid": jid,
                "node": holder,
                "pending_rows": local[0] if local else None,
                "mirror_lag_seconds": round(local[1], 3) if local else None,
                "last_error": error,
            }
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_table(report))
    return 0


def _table(report: list[dict[str, Any]]) -> str:
    header = ("COMPANY", "STATE", "SINCE", "MIRROR LAG", "PENDING", "LAST ERROR")
    rows = [
        (
            r["company"],
            r["state"],
            (r["since"] or "-")[:19].replace("T", " "),
            "-" if r["mirror_lag_seconds"] is None else f"{r['mirror_lag_seconds']:.1f}s",
            "-" if r["pending_rows"] is None else str(r["pending_rows"]),
            (r["last_error"] or "-")[:60],
        )
        for r in report
    ]
    return render(header, rows, "(no companies)")
