"""``wapool migrate``: bring the PostgreSQL schema up to this version (idempotent)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from wapool.db import diagnosis
from wapool.db.migrations import latest_version, migrate
from wapool.db.pool import Database
from wapool.settings import Settings

MIGRATE_TIMEOUT_SECONDS = 600.0


def register(commands: Any) -> None:
    parser = commands.add_parser("migrate", help="apply pending database migrations")
    parser.set_defaults(handler=_migrate)


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """A small pool for a one-shot command; fails fast when PostgreSQL is unreachable."""
    db = Database.from_settings(settings, min_size=1)
    await db.probe(timeout=settings.db_connect_timeout_seconds + 1.0)
    await db.open(wait=True)
    try:
        yield db
    finally:
        await db.close()


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db, db.pool.connection() as conn:
        try:
            applied = await migrate(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise diagnosis.privilege_failure(exc, conn.info.user) from None
    if applied:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        print(f"migrated to version {latest_version()} (applied {names})")
    else:
        print(f"already at version {latest_version()}; nothing to do")
    return 0
