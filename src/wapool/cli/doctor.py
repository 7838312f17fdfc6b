"""``wapool doctor``: one verdict per check, non-zero exit if any fails."""

from __future__ import annotations

import argparse
import asyncio
import ctypes.util
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from wapool.crypto import keyring
from wapool.crypto.usage import judge, usage
from wapool.db.migrations import check_schema
from wapool.db.pool import Conn, Database
from wapool.errors import WapoolError
from wapool.observability.redact import describe_error
from wapool.settings import Settings
from wapool.store.leftovers import replaced_copies, stale_temporaries
from wapool.store.rescue import read_report
from wapool.whatsapp import media_tools

TABLES = (
    "companies", "store_copies", "store_rows", "store_tombstones", "company_leases",
    "cleanup_runs", "store_size_history", "pairing_requests", "session_states", "nodes",
    "store_data_keys",
)  # fmt: skip


def register(commands: Any) -> None:
    parser = commands.add_parser("doctor", help="check settings, database, state dir, libraries")
    parser.set_defaults(handler=_doctor)


class Failed(Exception):
    pass


async def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings, min_size=1, load_keys=False)
    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("settings", _ok("valid (.env and environment)")),
        ("postgresql reachable", lambda: _reachable(db, settings)),
        ("postgresql migrated", lambda: _migrated(db)),
        ("role privileges", lambda: _privileges(db)),
        ("master key", lambda: _master_key(db, settings)),
        ("state directory", lambda: _state_dir(settings)),
        ("store leftovers", lambda: _leftovers(settings)),
        ("neonize library", _neonize),
        ("libmagic", _libmagic),
        ("ffmpeg (optional)", _media_tools),
    ]
    failures = 0
    try:
        for name, check in checks:
            try:
                detail = await check()
                print(f"OK    {name}: {detail}")
            except (Failed, WapoolError) as exc:
                failures += 1
                print(f"FAIL  {name}: {exc}")
            except Exception as exc:  # a check that breaks is a failed check, not a crash
                failures += 1
                print(f"FAIL  {name}: {describe_error(exc)}")
    finally:
        await db.close()
    print("all checks passed" if not failures else f"{failures} check(s) failed")
    return 0 if not failures else 1


def _ok(text: str) -> Callable[[], Awaitable[str]]:
    async def check() -> str:
        return text

    return check


async def _reachable(db: Database, settings: Settings) -> str:
    await db.probe(timeout=settings.db_connect_timeout_seconds + 1.0)
    await db.open(wait=True)
    return settings.safe_database_target()


async def _master_key(db: Database, settings: Settings) -> str:
    """The key loads (mode, owner, shape) and holds every master key the database uses."""
    ring = keyring.load(settings.master_key_file)  # ConfigError names the credential
    return judge(ring, await usage(db, count_rows=False), settings)


async def _migrated(db: Database) -> str:
    return f"schema version {await db.run(check_schema)}"


async def _privileges(db: Database) -> str:
    async def work(conn: Conn) -> tuple[bool, list[str]]:
        cur = await conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        row = await cur.fetchone()
        missing = []
        for table in TABLES:
            cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
            exists = await cur.fetchone()
            if not (exists and exists[0]):
                missing.append(f"{table} (missing)")
                continue
            cur = await conn.execute(
                "SELECT has_table_privilege(current_user, %s, 'SELECT,INSERT,UPDATE,DELETE')",
                (table,),
            )
            ok = await cur.fetchone()
            if not (ok and ok[0]):
                missing.append(table)
        return bool(row and row[0]), missing

    superuser, missing = await db.run(work)
    if missing:
        raise Failed(f"no read/write access to {', '.join(missing)}")
    if superuser:
        return "read/write on wapool's tables (as a superuser: prefer deploy/postgres-role.sql)"
    return "read/write on wapool's tables, not a superuser"


async def _state_dir(settings: Settings) -> str:
    path = settings.state_dir
    if not path.is_dir():
        raise Failed(f"{path} does not exist (the daemon creates it; check its parent)")
    info = path.stat()
    if info.st_mode & 0o077:
        raise Failed(f"{path} is mode {oct(info.st_mode & 0o777)}: it holds private keys, use 0700")
    if info.st_uid != os.geteuid():
        raise Failed(f"{path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
    usage = shutil.disk_usage(path)
    free = usage.free / usage.total
    if free < 0.10 or usage.free < 1 << 30:
        raise Failed(f"only {usage.free >> 20} MiB ({free:.0%}) free on {path}")
    return f"{path}: 0700, {usage.free >> 30} GiB ({free:.0%}) free"


async def _leftovers(settings: Settings) -> str:
    """Replaced stores kept (listed; a failure when their salvage could not save everything)
    and temporaries of restores that died: they all hold private keys."""
    kept, stale, unsaved = await asyncio.to_thread(_scan_leftovers, settings.state_dir)
    problems = [f"{name}: NOT SAVED: {why}" for name, why in unsaved]
    if stale:
        problems.append(f"temporaries of a dead restore: {', '.join(stale)}")
    if problems:
        raise Failed(
            "; ".join(problems) + " (see docs: a replaced store can be inspected with sqlite3; "
            "delete it once dealt with)"
        )
    if not kept:
        return "no replaced stores kept"
    days = settings.key_retention_days
    return f"{len(kept)} replaced store(s) kept, removed after {days} days: {', '.join(kept)}"


def _scan_leftovers(state_dir: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    copies = replaced_copies(state_dir)
    kept = [f"{c.company_id}/{c.path.name} ({c.size >> 10} KiB)" for c in copies]
    unsaved = []
    for copy in copies:
        if copy.report is not None:
            report = read_report(copy.report)
            if not report.complete:
                unsaved.append((f"{copy.company_id}/{copy.path.name}", report.describe()))
    stale = [
        f"{directory.name}/{path.name}"
        for directory in sorted(p for p in state_dir.iterdir() if p.is_dir())
        for path in stale_temporaries(directory)
    ] if state_dir.is_dir() else []  # fmt: skip
    return kept, stale, unsaved


async def _neonize() -> str:
    """Load neonize (and its Go library) in a child process: a crash must not hit us."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import neonize, neonize.client; print(neonize.__file__)"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit {result.returncode}"]
        raise Failed(f"does not load: {lines[-1]}")
    return "loads (Go library included)"


async def _libmagic() -> str:
    found = ctypes.util.find_library("magic")
    if not found:
        raise Failed("libmagic not found: apt-get install libmagic1")
    return found


async def _media_tools() -> str:
    """Optional, so never a failure: said here once instead of by every worker process."""
    absent = media_tools.missing()
    if not absent:
        return "ffmpeg and ffprobe found"
    return f"{' and '.join(absent)} not installed; needed for {media_tools.NEEDED_FOR}"
