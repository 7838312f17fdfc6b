"""``wapool status [--json]``: every company's session and mirror state, from any host.

Session states come from what the driving daemon last recorded in PostgreSQL; the mirror lag
and pending rows are read from the working stores on this host (``-`` when it has none). Stores
are opened read-only, one at a time: a store that cannot be read is one row saying why
(``store_error``), never a failed command. Replaced stores kept on this host (``leftovers``)
are listed after the table, with what their salvage could not save, and so are the webhook's
dead letters kept on this host (``webhook_dead_letters`` in JSON). With PostgreSQL
unreachable, the daemon on this host answers instead (``status_local``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

from wapool.cli.database import open_database
from wapool.cli.status_local import local_status, render_local
from wapool.cli.table import render
from wapool.errors import DatabaseUnavailable
from wapool.messaging.cursors import CURSORS_FILE
from wapool.observability.redact import describe_error
from wapool.settings import Settings
from wapool.store import changelog
from wapool.store.faults import SQLITE_ERRORS, StoreFault
from wapool.store.leftovers import Replaced, replaced_copies
from wapool.store.rescue import read_report
from wapool.store.working_store import read_only, store_path


def register(commands: Any) -> None:
    parser = commands.add_parser("status", help="sessions and mirror state of every company")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_status)


def _local(path: Path) -> dict[str, Any]:
    """Pending rows and lag of a working store on this host, or why they cannot be read."""
    try:
        if not path.exists():
            return {"pending_rows": None, "mirror_lag_seconds": None, "store_error": None}
        with closing(read_only(path)) as conn:
            pending = changelog.pending(conn)
    except (StoreFault, *SQLITE_ERRORS, OSError) as exc:
        return {
            "pending_rows": None,
            "mirror_lag_seconds": None,
            "store_error": describe_error(exc),
        }
    lag = max(0.0, time.time() - pending.oldest_at) if pending.oldest_at else 0.0
    return {"pending_rows": pending.rows, "mirror_lag_seconds": round(lag, 3), "store_error": None}


def _dead_letters(state_dir: Path) -> dict[str, int]:
    """Webhook dead letters per company kept in this host's messaging file (read-only)."""
    path = state_dir / CURSORS_FILE
    if not path.exists():
        return {}
    try:
        with closing(read_only(path)) as conn:
            rows = conn.execute("SELECT company, count(*) FROM dead_letters GROUP BY 1").fetchall()
    except (StoreFault, *SQLITE_ERRORS, OSError):
        return {}
    return {str(c): int(n) for c, n in rows}


def _replaced(copy: Replaced) -> dict[str, Any]:
    unsaved = None
    if copy.report is not None:
        try:
            report = read_report(copy.report)
            unsaved = None if report.complete else report.describe()
        except (OSError, ValueError, KeyError) as exc:
            unsaved = f"salvage report unreadable: {describe_error(exc)}"
    return {"file": copy.path.name, "replaced_at": copy.replaced_at.isoformat(),
            "bytes": copy.size, "unsaved": unsaved}  # fmt: skip


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    try:
        async with open_database(settings) as db:
            rows = await db.fetch(
                "SELECT c.id, c.enabled, c.paired_jid, s.state, s.since, s.last_error, s.holder "
                "FROM companies c LEFT JOIN session_states s ON s.company_id = c.id "
                "WHERE c.removed_at IS NULL ORDER BY c.id"
            )
    except DatabaseUnavailable as exc:  # an outage: the local daemon is the witness left
        local = await asyncio.to_thread(local_status, settings, exc)
        print(json.dumps(local, indent=2) if args.json else render_local(local, exc))
        return 0
    kept = await asyncio.to_thread(replaced_copies, settings.state_dir)
    dead = await asyncio.to_thread(_dead_letters, settings.state_dir)
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
                **local,
                "last_error": error,
                "replaced_stores": [_replaced(c) for c in kept if c.company_id == company],
                "webhook_dead_letters": dead.get(company, 0),
            }
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_table(report))
        kept_text = _kept(report, settings.key_retention_days)
        if kept_text:
            print(kept_text)
        if dead:
            print("\nwebhook dead letters on this host (events the receiver never accepted):")
            print("\n".join(f"  {company}: {count}" for company, count in sorted(dead.items())))
    return 0


def _table(report: list[dict[str, Any]]) -> str:
    header = ("COMPANY", "STATE", "SINCE", "MIRROR LAG", "PENDING", "LAST ERROR")
    rows = [
        (
            r["company"],
            r["state"],
            (r["since"] or "-")[:19].replace("T", " "),
            "-" if r["mirror_lag_seconds"] is None else f"{r['mirror_lag_seconds']:.1f}s",
            "unreadable" if r["store_error"] else "-" if r["pending_rows"] is None
            else str(r["pending_rows"]),
            (f"store: {r['store_error']}" if r["store_error"] else r["last_error"] or "-")[:60],
        )
        for r in report
    ]  # fmt: skip
    return render(header, rows, "(no companies)")


def _kept(report: list[dict[str, Any]], days: int) -> str:
    lines = [
        f"  {r['company']}/{c['file']} ({c['bytes'] >> 10} KiB)"
        + (f": NOT SAVED: {c['unsaved']}" if c["unsaved"] else "")
        for r in report
        for c in r["replaced_stores"]
    ]
    if not lines:
        return ""
    return f"\nreplaced stores kept on this host (removed by the cleanup after {days} days):\n" + (
        "\n".join(lines)
    )
