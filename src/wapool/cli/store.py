"""``wapool verify``, ``wapool export`` and ``wapool import``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wapool.cli.database import open_database
from wapool.crypto import sealed_file
from wapool.errors import ExitCode, WapoolError
from wapool.leases import current_holders
from wapool.observability.redact import describe_error
from wapool.registry.repository import CompanyRepository
from wapool.settings import Settings
from wapool.store import pg_copy, restore, transfer
from wapool.store.export_file import ExportFile, read_export
from wapool.store.faults import SQLITE_ERRORS, StoreFault
from wapool.store.import_lease import held_for_import
from wapool.store.leftovers import replaced_copies
from wapool.store.rescue import read_report
from wapool.store.verify import Verdict, verify, wait_drained
from wapool.store.working_store import store_path


def register(commands: Any) -> None:
    check = commands.add_parser(
        "verify", help="compare working stores with their PostgreSQL copies (non-zero if not equal)"
    )
    check.add_argument("company_id", metavar="COMPANY", nargs="?")
    check.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the mirror to drain"
    )
    check.set_defaults(handler=_verify)

    export = commands.add_parser("export", help="write a company's store to a file")
    export.add_argument("company_id", metavar="COMPANY")
    export.add_argument("file", metavar="FILE", type=Path)
    export.add_argument(
        "--passphrase-file",
        type=Path,
        help="encrypt with the passphrase on the first line of this file (default: prompt)",
    )
    export.add_argument(
        "--plaintext",
        action="store_true",
        help="write an unencrypted file (it holds the account's private keys)",
    )
    export.set_defaults(handler=_export)

    imp = commands.add_parser("import", help="replace a company's store with an exported file")
    imp.add_argument("company_id", metavar="COMPANY")
    imp.add_argument("file", metavar="FILE", type=Path)
    imp.add_argument("--force", action="store_true", help="overwrite a paired company")
    imp.add_argument(
        "--passphrase-file",
        type=Path,
        help="an encrypted file's passphrase, on the first line of this file (default: prompt)",
    )
    imp.add_argument(
        "--from-company",
        metavar="ID",
        help="the file is an export of company ID (needed when ID is not COMPANY)",
    )
    imp.set_defaults(handler=_import)


def passphrase(path: Path | None, *, confirm: bool) -> Callable[[], bytes]:
    """The passphrase, read when needed: from the first line of ``path``, else a prompt."""

    def read() -> bytes:
        if path is not None:
            try:
                lines = path.read_bytes().splitlines()
            except OSError as exc:
                raise WapoolError(f"{path}: cannot read the passphrase ({exc.strerror})") from None
            return sealed_file.check_passphrase(lines[0] if lines else b"")
        if not sys.stdin.isatty():
            raise WapoolError("no terminal to ask for the passphrase: give --passphrase-file")
        first = getpass.getpass("export passphrase: ").encode()
        if confirm and getpass.getpass("again: ").encode() != first:
            raise WapoolError("the passphrases differ")
        return sealed_file.check_passphrase(first)

    return read


def _replace_local(path: Path, meta: pg_copy.CopyMeta, export: ExportFile) -> None:
    """A working store of the company on this host takes the imported content at once."""
    if path.parent.exists():
        restore.build_from_rows(path, meta, export.rows)


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        if args.company_id:
            companies = [(await CompanyRepository(db).get(args.company_id)).id]
        else:
            companies = [c.id for c in await CompanyRepository(db).list() if c.active]
        verdicts: list[Verdict | str] = []
        elsewhere: dict[str, str] = {}
        if not args.company_id:  # a store left by a node that drove it before is not its copy
            holders = await current_holders(db)
            me = settings.lease_holder
            elsewhere = {c: h for c, h in holders.items() if h not in (me, "")}
        for company_id in companies:
            path = store_path(settings.state_dir, company_id)
            if not await asyncio.to_thread(_exists, path):
                if args.company_id:
                    raise WapoolError(f"no working store for {company_id!r} on this host ({path})")
                continue
            if company_id in elsewhere:
                print(f"{company_id}: SKIPPED (driven by {elsewhere[company_id]}: verify there)")
                continue
            try:
                await wait_drained(path, args.timeout)
                verdicts.append(await verify(db, path, company_id))
            except (StoreFault, *SQLITE_ERRORS, OSError) as exc:  # one bad store, one bad row
                verdicts.append(f"{company_id}: UNREADABLE ({describe_error(exc)})")
    for verdict in verdicts:
        print(verdict if isinstance(verdict, str) else _report(verdict))
    for note in await asyncio.to_thread(_kept_aside, settings.state_dir, set(companies)):
        print(note)
    if not verdicts:
        print("no working stores on this host to verify")
    equal = all(not isinstance(v, str) and (v.equal or v.stale) for v in verdicts)
    return ExitCode.OK if equal else ExitCode.FAILURE


def _kept_aside(state_dir: Path, companies: set[str]) -> list[str]:
    """Changes a daemon kept aside when its lease was taken over (``store.aside``): never in
    PostgreSQL, for an operator to look at; they do not make ``verify`` fail."""
    notes = []
    for copy in replaced_copies(state_dir):
        if copy.company_id in companies and copy.report is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                report = read_report(copy.report)
                if report.aside:
                    notes.append(f"{copy.company_id}: KEPT ASIDE {report.describe()}")
    return notes


def _exists(path: Path) -> bool:
    """Is there a store to verify? One that cannot even be looked at counts (and fails)."""
    try:
        return path.exists()
    except OSError:
        return True


def _report(verdict: Verdict) -> str:
    state = "EQUAL" if verdict.equal else "STALE" if verdict.stale else "DIFFERENT"
    lines = [
        f"{verdict.company_id}: {state} (local seq {verdict.local_seq}, PostgreSQL seq "
        f"{verdict.postgres_seq if verdict.postgres_seq is not None else 'none'}, "
        f"pending {verdict.pending}{'' if verdict.same_store else ', different store identity'})",
        f"  {'TABLE':<36} {'LOCAL':>8} {'POSTGRES':>8} {'MISSING':>8} {'EXTRA':>8} {'DIFFER':>8}",
    ]
    for t in verdict.tables:
        lines.append(
            f"  {t.table:<36} {t.local_rows:>8} {t.postgres_rows:>8} "
            f"{t.missing_in_postgres:>8} {t.extra_in_postgres:>8} {t.different:>8}"
        )
    return "\n".join(lines)


async def _export(settings: Settings, args: argparse.Namespace) -> int:
    if args.plaintext and args.passphrase_file:
        raise WapoolError("--plaintext and --passphrase-file exclude each other")
    secret = None if args.plaintext else passphrase(args.passphrase_file, confirm=True)()
    async with open_database(settings) as db:
        await CompanyRepository(db).get(args.company_id)
        rows = await transfer.export_company(db, args.company_id, args.file, secret)
    kind = "unencrypted" if secret is None else "encrypted"
    print(f"exported {rows} rows of {args.company_id} to {args.file} ({kind})")
    return ExitCode.OK


async def _import(settings: Settings, args: argparse.Namespace) -> int:
    # everything is checked before anything changes
    export = read_export(args.file, passphrase(args.passphrase_file, confirm=False))
    transfer.check_origin(export, args.company_id, args.from_company)
    path = store_path(settings.state_dir, args.company_id)
    async with open_database(settings) as db:
        await CompanyRepository(db).get(args.company_id)  # unknown: said before any lease
        async with held_for_import(db, args.company_id, settings.lease_seconds) as fence:
            meta = await transfer.import_company(
                db, args.company_id, export, force=args.force, source=str(args.file), fence=fence
            )
            # Still under the lease: no daemon starts the company on the old file meanwhile.
            await asyncio.to_thread(_replace_local, path, meta, export)
    print(
        f"imported {len(export.rows)} rows into {args.company_id} (store {meta.store_uuid}"
        f"{', forced' if args.force else ''})"
    )
    return ExitCode.OK
