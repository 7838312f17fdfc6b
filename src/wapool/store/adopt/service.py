"""Adopt one device into one company: read and check everything, then replace in one step.

Order, so that a refusal changes nothing:

1. the source is read (from a private copy, or a read-only transaction) and its keys verified;
2. the company must exist; the device must not be held by another company; a paired company
   needs ``--force`` (``--dry-run`` stops here and reports);
3. the company's lease is taken as ``wapool import`` takes it (refused while a daemon drives the
   company), so no daemon starts it until the end;
4. the working store is built and upgraded in a temporary file beside the working store
   (``build``; ``store.db.adopting-<pid>``, which ``leftovers`` removes if the process dies);
5. the PostgreSQL copy is replaced in one transaction (``transfer.import_company``, which
   checks 2. again atomically and records the adoption in ``store_imports``), and this host's
   working store is rebuilt from the same rows.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from wapool.db.pool import Conn, Database
from wapool.registry.repository import CompanyRepository
from wapool.store import restore, transfer
from wapool.store.adopt.build import Built, SchemaMaker, build
from wapool.store.adopt.source import DEVICE_TABLE, AdoptRefused, Taken
from wapool.store.devices import holders
from wapool.store.import_lease import held_for_import
from wapool.store.leftovers import remove_file_set
from wapool.store.working_store import prepare_dir
from wapool.whatsapp.neonize_store import create_schema


@dataclass(frozen=True)
class Adopted:
    taken: Taken
    built: Built | None  # None for a dry run
    store_uuid: str | None
    paired_before: bool


async def adopt(
    db: Database,
    state_dir: Path,
    company_id: str,
    taken: Taken,
    *,
    force: bool,
    dry_run: bool,
    lease_seconds: float,
    make_schema: SchemaMaker = create_schema,
) -> Adopted:
    await CompanyRepository(db).get(company_id)
    paired = await _precheck(db, company_id, taken, force=force, dry_run=dry_run)
    if dry_run:
        return Adopted(taken, None, None, paired)
    async with held_for_import(db, company_id, lease_seconds) as fence:
        path = prepare_dir(state_dir, company_id)
        temp = adopting_name(path)
        try:
            await asyncio.to_thread(remove_file_set, temp)
            built = await asyncio.to_thread(build, taken, temp, company_id, make_schema)
            meta = await transfer.import_company(
                db, company_id, built.store, force=force, source=f"adopt {taken.source}",
                fence=fence,
            )  # fmt: skip
            await asyncio.to_thread(restore.build_from_rows, path, meta, built.store.rows)
            await CompanyRepository(db).set_paired_jid(company_id, built.jid)
        finally:
            await asyncio.to_thread(remove_file_set, temp)
    return Adopted(taken, built, meta.store_uuid, paired)


def adopting_name(path: Path) -> Path:
    """Where the store is built: beside the working store (0700), under a name ``leftovers``
    knows, so a killed adoption leaves no private keys behind for long."""
    return path.with_name(f"{path.name}.adopting-{os.getpid()}")


async def _precheck(
    db: Database, company_id: str, taken: Taken, *, force: bool, dry_run: bool
) -> bool:
    async def work(conn: Conn) -> tuple[list[str], bool]:
        taken_by = await holders(conn, company_id, [taken.jid])
        cur = await conn.execute(
            "SELECT (SELECT paired_jid IS NOT NULL FROM companies WHERE id = %s) OR EXISTS "
            "(SELECT 1 FROM store_rows WHERE company_id = %s AND tbl = %s)",
            (company_id, company_id, DEVICE_TABLE),
        )
        row = await cur.fetchone()
        return taken_by, bool(row and row[0])

    taken_by, paired = await db.run(work)
    if taken_by:
        raise AdoptRefused(
            f"device {taken.jid} is already held by company {', '.join(taken_by)}: one WhatsApp "
            "device cannot serve two companies; remove that company first (wapool company remove ID)"
        )
    if paired and not force and not dry_run:
        raise AdoptRefused(
            f"company {company_id!r} is already paired; adopting replaces its session: "
            "use --force to overwrite it"
        )
    return paired
