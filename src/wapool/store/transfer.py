"""``wapool export`` / ``wapool import``: a company's PostgreSQL copy to and from a file.

The file itself (format, checks, damage reports) is ``export_file``. Import checks all of the
file before changing anything, and refuses:

* a file exported from another company, unless the operator names that company
  (``--from-company``): one company's device and keys must not end up in another by mistake;
* a device that another (not removed) company holds, in its PostgreSQL copy or as its paired
  JID, whatever the flags: two companies on one WhatsApp device would replace each other's
  connection forever (see ``devices``). To move a device, remove the old company first;
* a company a daemon drives (see ``import_lease``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from wapool.crypto.envelope import seal
from wapool.db.pool import Conn, Database
from wapool.errors import CompanyNotFound, WapoolError
from wapool.leases import Fence
from wapool.store import devices, pg_copy
from wapool.store.export_file import ExportFile, write_export


class ImportRefused(WapoolError):
    """Importing would replace a paired session (use --force), move a device between
    companies, or write without the company's lease."""


#: Serialises imports cluster-wide, so two cannot give one device to two companies at once.
IMPORT_LOCK_ID = 0x7761706F6F6C696D & 0x7FFF_FFFF_FFFF_FFFF  # "wapoolim"


async def export_company(
    db: Database, company_id: str, target: Path, passphrase: bytes | None = None
) -> int:
    """Write the PostgreSQL copy of ``company_id`` to ``target``, sealed with ``passphrase``
    (plain when None); return the row count."""
    meta = await pg_copy.fetch_meta(db, company_id)
    if meta is None:
        raise CompanyNotFound(f"no PostgreSQL copy of company {company_id!r} to export")
    rows = await pg_copy.fetch_rows(db, company_id, timeout=db.query_timeout + 60)
    await asyncio.to_thread(write_export, target, company_id, meta, rows, passphrase)
    return len(rows)


def check_origin(export: ExportFile, company_id: str, from_company: str | None) -> None:
    """Refuse a file exported from another company unless the operator named that company."""
    if from_company is not None and from_company != export.company_id:
        raise ImportRefused(
            f"the file is an export of company {export.company_id!r}, not {from_company!r}"
        )
    if export.company_id != company_id and from_company is None:
        raise ImportRefused(
            f"the file is an export of company {export.company_id!r}, not {company_id!r}: its "
            f"device and keys would move to {company_id!r}; to mean it, add "
            f"--from-company {export.company_id}"
        )


async def import_company(
    db: Database,
    company_id: str,
    export: ExportFile,
    *,
    force: bool,
    source: str,
    fence: Fence,
) -> pg_copy.CopyMeta:
    """Replace the company's PostgreSQL copy with the export, under ``fence`` (the import's
    lease, see ``import_lease``); returns the new copy's metadata."""
    new_uuid = str(uuid.uuid4())
    keys, unusable = await db.cipher.prepare(db, [company_id])

    async def work(conn: Conn) -> pg_copy.CopyMeta:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (IMPORT_LOCK_ID,))
        if refused := await fence.refused(conn, [company_id]):
            raise ImportRefused(f"company {company_id!r}: lost the import's lease ({refused})")
        if taken := await devices.holders(conn, company_id, devices.jids(export.rows)):
            raise ImportRefused(
                f"the export's device is already held by company {', '.join(taken)}: one "
                "WhatsApp device cannot serve two companies; remove that company first "
                "(wapool company remove ID)"
            )
        cur = await conn.execute(
            "SELECT paired_jid FROM companies WHERE id = %s AND removed_at IS NULL FOR UPDATE",
            (company_id,),
        )
        company = await cur.fetchone()
        if company is None:
            raise CompanyNotFound(f"unknown company {company_id!r}")
        cur = await conn.execute(
            "SELECT count(*) FROM store_rows WHERE company_id = %s AND tbl = %s",
            (company_id, devices.DEVICE_TABLE),
        )
        paired = company[0] or (await cur.fetchone() or (0,))[0]
        if paired and not force:
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
        dk = keys.get(company_id)
        if db.cipher.enabled and dk is None:  # never write plaintext beside sealed rows
            raise ImportRefused(unusable.get(company_id, "no data key for the company"))
        async with conn.cursor().copy(
            "COPY store_rows (company_id, tbl, pk, image, written_at) FROM STDIN"
        ) as copy:
            now = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime())
            for table, key, image in export.rows:
                if dk is not None:  # imported rows are written at seq 0 (the column's default)
                    image = seal(dk, company_id, table, key, 0, image)
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
