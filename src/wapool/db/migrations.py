"""Numbered ``.sql`` migrations, applied in order under an advisory lock and recorded.

Each file ``NNNN_name.sql`` in ``wapool/db/migrations`` runs in its own transaction together
with the row that records it (version, name, SHA-256 of the file). A session-level advisory lock
serialises concurrent ``wapool migrate`` runs: the second waits, then finds nothing to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from psycopg import AsyncConnection, sql

from wapool.errors import MigrationError, SchemaNotMigrated, SchemaTooNew

log = logging.getLogger(__name__)

#: Arbitrary constant shared by every wapool: "wapool migrations" as a 63-bit number.
MIGRATION_LOCK_ID = 0x7761706F6F6C6D67 & 0x7FFF_FFFF_FFFF_FFFF
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

BOOKKEEPING_DDL = """
CREATE TABLE IF NOT EXISTS wapool_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def known_migrations() -> list[Migration]:
    """The migrations shipped with this wapool, in order."""
    found: list[Migration] = []
    for entry in resources.files("wapool.db").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration files are not numbered 1..N without gaps: {versions}")
    return found


def latest_version() -> int:
    return known_migrations()[-1].version


async def applied_versions(conn: AsyncConnection[Any]) -> dict[int, str]:
    """version -> sha256 of what this database recorded; empty when never migrated."""
    cur = await conn.execute("SELECT to_regclass('wapool_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return {}
    cur = await conn.execute("SELECT version, sha256 FROM wapool_migrations ORDER BY version")
    return {int(v): str(h) for v, h in await cur.fetchall()}


async def migrate(conn: AsyncConnection[Any]) -> list[Migration]:
    """Apply what is missing; return the migrations applied now (empty when up to date)."""
    await conn.set_autocommit(True)
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
    try:
        await conn.execute(BOOKKEEPING_DDL)
        applied = await applied_versions(conn)
        _check_compatible(applied)
        done: list[Migration] = []
        for migration in known_migrations():
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(sql.SQL(migration.sql))
                await conn.execute(
                    "INSERT INTO wapool_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.sha256),
                )
            log.info(
                "migration_applied",
                extra={"version": migration.version, "migration": migration.name},
            )
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))


async def check_schema(conn: AsyncConnection[Any]) -> int:
    """Raise unless the database is at exactly this wapool's schema version; return it."""
    applied = await applied_versions(conn)
    _check_compatible(applied)
    current = max(applied, default=0)
    if current < latest_version():
        raise SchemaNotMigrated(
            f"database schema is at version {current}, this wapool needs {latest_version()}: "
            "run `wapool migrate`"
        )
    return current


def _check_compatible(applied: dict[int, str]) -> None:
    known = {m.version: m for m in known_migrations()}
    newest = max(applied, default=0)
    if newest > max(known):
        raise SchemaTooNew(
            f"database schema is at version {newest} but this wapool knows only up to "
            f"{max(known)}: it was migrated by a newer wapool; upgrade wapool or restore "
            "the matching release"
        )
    for version, digest in applied.items():
        if known[version].sha256 != digest:
            raise MigrationError(
                f"migration {version:04d}_{known[version].name}.sql differs from the one "
                "applied to this database; restore the released file"
            )
