"""Compare a working store with its PostgreSQL copy, table by table.

The store is opened read-only (``working_store.read_only``): verifying never changes it, and a
store that cannot be read raises ``StoreFault`` for that company alone."""

from __future__ import annotations

import asyncio
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from wapool.db.pool import Conn, Database
from wapool.store import changelog, pg_copy
from wapool.store.dump import Rows, dump_rows
from wapool.store.working_store import get_meta, read_only, transaction


@dataclass(frozen=True)
class TableReport:
    table: str
    local_rows: int
    postgres_rows: int
    missing_in_postgres: int
    extra_in_postgres: int
    different: int

    @property
    def equal(self) -> bool:
        return not (self.missing_in_postgres or self.extra_in_postgres or self.different)


@dataclass(frozen=True)
class Verdict:
    company_id: str
    pending: int
    local_seq: int
    postgres_seq: int | None
    same_store: bool
    tables: list[TableReport] = field(default_factory=list)

    @property
    def stale(self) -> bool:
        """An older state of the store, nothing pending: another node drove the company since
        (it is restored when driven here again). Not a divergence. A restore elsewhere gave
        the copy a new identity (``store.fork``): an older line that owes nothing is stale too."""
        if self.pending or self.postgres_seq is None:
            return False
        if self.same_store:
            return self.local_seq < self.postgres_seq
        return self.local_seq <= self.postgres_seq

    @property
    def equal(self) -> bool:
        return (
            self.pending == 0
            and self.same_store
            and self.postgres_seq == self.local_seq
            and all(t.equal for t in self.tables)
        )


@dataclass(frozen=True)
class _Local:
    rows: Rows
    pending: int
    last_seq: int
    store_uuid: str | None


def _read_local(path: Path) -> _Local:
    with closing(read_only(path)) as conn, transaction(conn):
        return _Local(
            dump_rows(conn, own_transaction=False),
            changelog.pending(conn).rows,
            changelog.last_seq(conn),
            get_meta(conn, "store_uuid"),
        )


async def wait_drained(path: Path, timeout: float) -> int:
    """Wait until the store's change log is empty (the mirror caught up); return what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = await asyncio.to_thread(_pending, path)
        if left == 0 or time.monotonic() >= deadline:
            return left
        await asyncio.sleep(0.1)


def _pending(path: Path) -> int:
    with closing(read_only(path)) as conn:
        return changelog.pending(conn).rows


async def verify(db: Database, path: Path, company_id: str) -> Verdict:
    local = await asyncio.to_thread(_read_local, path)

    async def work(conn: Conn) -> tuple[pg_copy.CopyMeta | None, list[tuple[str, str, str]]]:
        cur = await conn.execute(pg_copy.META_QUERY + " WHERE company_id = %s", (company_id,))
        row = await cur.fetchone()
        rows = await pg_copy.read_rows(conn, db, company_id)
        return (pg_copy.CopyMeta(*row) if row else None), rows

    meta, pg_rows = await db.run(work, timeout=db.query_timeout + 30)
    remote: Rows = {(t, k): i for t, k, i in pg_rows}
    tables = sorted({t for t, _ in local.rows} | {t for t, _ in remote})
    reports = []
    for table in tables:
        mine = {k: v for (t, k), v in local.rows.items() if t == table}
        theirs = {k: v for (t, k), v in remote.items() if t == table}
        reports.append(
            TableReport(
                table=table,
                local_rows=len(mine),
                postgres_rows=len(theirs),
                missing_in_postgres=len(mine.keys() - theirs.keys()),
                extra_in_postgres=len(theirs.keys() - mine.keys()),
                different=sum(1 for k in mine.keys() & theirs.keys() if mine[k] != theirs[k]),
            )
        )
    return Verdict(
        company_id=company_id,
        pending=local.pending,
        local_seq=local.last_seq,
        postgres_seq=meta.applied_seq if meta else None,
        same_store=meta is not None and meta.store_uuid == local.store_uuid,
        tables=reports,
    )
