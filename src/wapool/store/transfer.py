"""``wapool export`` / ``wapool import``: a company's store as one self-contained file.

The file is a valid whatsmeow SQLite store (rollback journal, not WAL, so it is one file) whose
``wapool_meta`` table also records the company, row count and a digest of every row. Import
checks all of it before changing anything.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from wapool import __version__
from wapool.db.pool import Conn, Database
from wapool.errors import CompanyNotFound, WapoolError
from wapool.store import pg_copy, restore
from wapool.store.dump import as_triples, dump_rows
from wapool.store.leftovers import remove_file_set
from wapool.store.schema import read_schema
from wapool.store.working_store import get_meta, set_meta, transaction

EXPORT_FORMAT = "1"


class BadExportFile(WapoolError):
    """The file is not a wapool export, is truncated, or fails its integrity check."""


class ImportRefused(WapoolError):
    """The company is paired; importing would replace its session (use --force)."""


@dataclass(frozen=True)
class ExportFile:
    company_id: str
    rows: list[tuple[str, str, str]]
    digest: str
    schema_ddl: str
    schema_version: int
    schema_fingerprint: str


async def export_company(db: Database, company_id: str, target: Path) -> int:
    """Write the PostgreSQL copy of ``company_id`` to ``target``; return the row count."""
    meta = await pg_copy.fetch_meta(db, company_id)
    if meta is None:
        raise CompanyNotFound(f"no PostgreSQL copy of company {company_id!r} to export")
    rows = await pg_copy.fetch_rows(db, company_id, timeout=db.query_timeout + 60)
    await asyncio.to_thread(write_export, target, company_id, meta, rows)
    return len(rows)


def write_export(
    target: Path, company_id: str, meta: pg_copy.CopyMeta, rows: list[tuple[str, str, str]]
) -> None:
    """Write the export through a hidden temporary file, removed whatever happens (it holds
    private keys)."""
    temp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        _write_export(target, temp, company_id, meta, rows)
    finally:
        remove_file_set(temp)


def _write_export(
    target: Path,
    temp: Path,
    company_id: str,
    meta: pg_copy.CopyMeta,
    rows: list[tuple[str, str, str]],
) -> None:
    if target.exists():
        raise WapoolError(f"{target} already exists; choose a new file name")
    temp.unlink(missing_ok=True)
    restore.build_from_rows(temp, meta, rows)
    with closing(sqlite3.connect(temp, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        with transaction(conn):
            for key, value in {
                "export_format": EXPORT_FORMAT,
                "export_company": company_id,
                "export_rows": str(len(rows)),
                "export_digest": pg_copy.digest(rows),
                "export_created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "export_wapool_version": __version__,
                "export_applied_seq": str(meta.applied_seq),
            }.items():
                set_meta(conn, key, value)
    os.replace(temp, target)


def read_export(source: Path) -> ExportFile:
    """Open and fully check an export file; raise ``BadExportFile`` with the reason."""
    if not source.is_file():
        raise BadExportFile(f"{source}: no such file")
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise BadExportFile(f"{source}: cannot open: {exc}") from None
    try:
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise BadExportFile(f"{source}: damaged SQLite file ({check[0][0]})")
        if get_meta(conn, "export_format") != EXPORT_FORMAT:
            raise BadExportFile(f"{source}: not a wapool export (format {EXPORT_FORMAT})")
        schema = read_schema(conn)
        rows = as_triples(dump_rows(conn))
        expected_rows = int(get_meta(conn, "export_rows") or -1)
        expected_digest = get_meta(conn, "export_digest") or ""
        company = get_meta(conn, "export_company") or ""
    except sqlite3.DatabaseError as exc:
        raise BadExportFile(f"{source}: not a usable wapool export: {exc}") from None
    finally:
        conn.close()
    if len(rows) != expected_rows or pg_copy.digest(rows) != expected_digest:
        raise BadExportFile(f"{source}: integrity check failed (rows or digest differ)")
    if not any(t.name == "whatsmeow_device" for t in schema.tables):
        raise BadExportFile(f"{source}: holds no whatsmeow store")
    return ExportFile(
        company, rows, expected_digest, pg_copy.DDL_SEPARATOR.join(schema.ddl), schema.version,
        schema.fingerprint,
    )  # fmt: skip


async def import_company(
    db: Database, company_id: str, export: ExportFile, *, force: bool, source: str
) -> pg_copy.CopyMeta:
    """Replace the company's PostgreSQL copy with the export; returns the new copy's metadata."""
    new_uuid = str(uuid.uuid4())

    async def work(conn: Conn) -> pg_copy.CopyMeta:
        cur = await conn.execute(
            "SELECT paired_jid FROM companies WHERE id = %s AND removed_at IS NULL FOR UPDATE",
            (company_id,),
        )
        company = await cur.fetchone()
        if company is None:
            raise CompanyNotFound(f"unknown company {company_id!r}")
        cur = await conn.execute(
            "SELECT count(*) FROM store_rows WHERE company_id = %s AND tbl = 'whatsmeow_device'",
            (company_id,),
        )
        devices = (await cur.fetchone() or (0,))[0]
        if (company[0] or devices) and not force:
            raise ImportRefused(
                f"company {company_id!r} is paired; importing replaces its session: "
                "use --force to overwrite it"
            )
        await conn.execute(
            "INSERT INTO store_copies (company_id, store_uuid, schema_version, schema_fingerprint, "
            "schema_ddl, applied_seq) VALUES (%s, %s, %s, %s, %s, 0) "
            "ON CONFLICT (company_id) DO UPDATE SET store_uuid = EXCLUDED.store_uuid, "
            "schema_version = EXCLUDED.schema_version, "
            "schema_fingerprint = EXCLUDED.schema_fingerprint, "
            "schema_ddl = EXCLUDED.schema_ddl, applied_seq = 0, updated_at = now()",
            (
                company_id,
                new_uuid,
                export.schema_version,
                export.schema_fingerprint,
                export.schema_ddl,
            ),
        )
        await conn.execute("DELETE FROM store_rows WHERE company_id = %s", (company_id,))
        async with conn.cursor().copy(
            "COPY store_rows (company_id, tbl, pk, image, written_at) FROM STDIN"
        ) as copy:
            now = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime())
            for table, key, image in export.rows:
                await copy.write_row((company_id, table, key, image, now))
        await conn.execute(
            "INSERT INTO store_imports (company_id, store_uuid, rows, digest, forced, source) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (company_id, new_uuid, len(export.rows), export.digest, force, source),
        )
        return pg_copy.CopyMeta(
            company_id, new_uuid, export.schema_version, export.schema_fingerprint,
            export.schema_ddl, 0, 0,
        )  # fmt: skip

    return await db.run(work, timeout=db.query_timeout + 60)
