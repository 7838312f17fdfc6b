"""``wapool adopt COMPANY --from-sqlite FILE | --from-postgres DSN | --from-baileys FILE``."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from wapool.cli.database import open_database
from wapool.errors import ExitCode, WapoolError
from wapool.settings import Settings
from wapool.store.adopt.baileys_source import take_baileys
from wapool.store.adopt.postgres_source import take_postgres
from wapool.store.adopt.service import Adopted, adopt
from wapool.store.adopt.source import Taken
from wapool.store.adopt.sqlite_source import take_sqlite
from wapool.store.adopt.verify import check_keys


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "adopt", help="take over a linked device from another WhatsApp store, without pairing"
    )
    parser.add_argument("company_id", metavar="COMPANY")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-sqlite", metavar="FILE", type=Path, help="a whatsmeow SQLite store")
    source.add_argument(
        "--from-postgres", metavar="DSN", help="a whatsmeow PostgreSQL database (needs --jid)"
    )
    source.add_argument(
        "--from-baileys", metavar="FILE", type=Path,
        help="a Baileys auth state as JSON (tools/baileys-dump.mjs)",
    )  # fmt: skip
    parser.add_argument("--jid", help="the device to take (e.g. 5511987654321:4@s.whatsapp.net)")
    parser.add_argument("--dry-run", action="store_true", help="check and report; change nothing")
    parser.add_argument("--force", action="store_true", help="replace a paired company's session")
    parser.set_defaults(handler=_adopt)


async def _adopt(settings: Settings, args: argparse.Namespace) -> int:
    if args.from_postgres is not None and not args.jid:
        raise WapoolError("--from-postgres needs --jid (one device at a time)")
    taken = await asyncio.to_thread(_take, args)
    async with open_database(settings) as db:
        adopted = await adopt(
            db, settings.state_dir, args.company_id, taken, force=args.force,
            dry_run=args.dry_run, lease_seconds=settings.lease_seconds,
        )  # fmt: skip
    print(_report(args.company_id, adopted))
    return ExitCode.OK


def _take(args: argparse.Namespace) -> Taken:
    if args.from_postgres is not None:
        taken = take_postgres(args.from_postgres, args.jid)
    elif args.from_baileys is not None:
        taken = take_baileys(args.from_baileys)
        if args.jid and args.jid != taken.jid:
            raise WapoolError(f"{taken.source}: holds device {taken.jid}, not {args.jid}")
    else:
        work = Path(tempfile.mkdtemp(prefix="wapool-adopt-"))
        try:
            taken = take_sqlite(args.from_sqlite, args.jid, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    check_keys(taken)
    return taken


def _report(company_id: str, adopted: Adopted) -> str:
    taken, built = adopted.taken, adopted.built
    verb = "would adopt" if built is None else "adopted"
    lines = [
        f"{verb} device {taken.jid} from {taken.source} (whatsmeow schema {taken.version}) "
        f"into {company_id}" + (" (replacing its paired session)" if adopted.paired_before else ""),
        f"  {'TABLE':<36} {'SOURCE':>8}" + ("" if built is None else f" {'ADOPTED':>8}"),
    ]
    counts = taken.counts()
    names = sorted(set(counts) | set(built.counts if built else {}))
    for name in names:
        line = f"  {name:<36} {counts.get(name, 0):>8}"
        if built is not None:
            line += f" {built.counts.get(name, 0):>8}"
        lines.append(line)
    for kind, count in sorted(taken.left_out.items()):
        lines.append(f"  left out: {count} {kind} record(s) (see docs/adopt.md)")
    if built is None and adopted.paired_before:
        lines.append("  the company is paired: adopting needs --force")
    if built is not None:
        lines.append(
            f"  keys verified; store {adopted.store_uuid}; start it: wapool company enable {company_id}"
        )
    return "\n".join(lines)
