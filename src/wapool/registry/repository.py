"""SQL for the ``companies`` table; translates constraint errors into wapool errors."""

from __future__ import annotations

from typing import Any, LiteralString

from psycopg import errors as pg_errors
from psycopg.rows import class_row

from wapool.db.pool import Conn, Database
from wapool.errors import CompanyExists, CompanyNotFound
from wapool.registry.company import Company, validate_company_id, validate_display_name

_COLUMNS: LiteralString = (
    "id, display_name, enabled, paired_jid, created_at, updated_at, removed_at"
)


class CompanyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self, *, include_removed: bool = False) -> list[Company]:
        query: LiteralString = f"SELECT {_COLUMNS} FROM companies"
        if not include_removed:
            query += " WHERE removed_at IS NULL"
        query += " ORDER BY id"

        async def work(conn: Conn) -> list[Company]:
            cur = conn.cursor(row_factory=class_row(Company))
            await cur.execute(query)
            return await cur.fetchall()

        return await self._db.run(work)

    async def get(self, company_id: str) -> Company:
        validate_company_id(company_id)

        async def work(conn: Conn) -> Company | None:
            cur = conn.cursor(row_factory=class_row(Company))
            await cur.execute(f"SELECT {_COLUMNS} FROM companies WHERE id = %s", (company_id,))
            return await cur.fetchone()

        company = await self._db.run(work)
        if company is None:
            raise CompanyNotFound(f"unknown company {company_id!r}")
        return company

    async def add(
        self,
        company_id: str,
        display_name: str = "",
        *,
        restore: bool = False,
        enabled: bool = True,
    ) -> Company:
        validate_company_id(company_id)
        validate_display_name(display_name)

        async def work(conn: Conn) -> Company:
            cur = conn.cursor(row_factory=class_row(Company))
            await cur.execute(
                f"SELECT {_COLUMNS} FROM companies WHERE id = %s FOR UPDATE", (company_id,)
            )
            existing = await cur.fetchone()
            if existing is not None and existing.removed_at is None:
                raise CompanyExists(f"company {company_id!r} already exists")
            if existing is not None and not restore:
                raise CompanyExists(
                    f"company {company_id!r} was removed on {existing.removed_at:%Y-%m-%d}; its "
                    "data is kept until the retention cleanup: add it with --restore to bring it "
                    "back"
                )
            if existing is not None:
                await cur.execute(
                    f"UPDATE companies SET removed_at = NULL, updated_at = now(), "
                    f"display_name = COALESCE(NULLIF(%s, ''), display_name), "
                    f"enabled = enabled AND %s WHERE id = %s RETURNING {_COLUMNS}",
                    (display_name, enabled, company_id),
                )
            else:
                try:
                    await cur.execute(
                        f"INSERT INTO companies (id, display_name, enabled) VALUES (%s, %s, %s) "
                        f"RETURNING {_COLUMNS}",
                        (company_id, display_name, enabled),
                    )
                except pg_errors.UniqueViolation:
                    raise CompanyExists(f"company {company_id!r} already exists") from None
            row = await cur.fetchone()
            assert row is not None
            return row

        return await self._db.run(work)

    async def set_enabled(self, company_id: str, enabled: bool) -> Company:
        return await self._update(company_id, "enabled = %(value)s", {"value": enabled})

    async def set_paired_jid(self, company_id: str, jid: str | None) -> Company:
        return await self._update(company_id, "paired_jid = %(value)s", {"value": jid})

    async def remove(self, company_id: str) -> Company:
        return await self._update(company_id, "removed_at = now()", {})

    async def _update(
        self, company_id: str, assignment: LiteralString, params: dict[str, Any]
    ) -> Company:
        validate_company_id(company_id)
        query: LiteralString = (
            f"UPDATE companies SET {assignment}, updated_at = now() "
            f"WHERE id = %(id)s AND removed_at IS NULL RETURNING {_COLUMNS}"
        )

        async def work(conn: Conn) -> Company | None:
            cur = conn.cursor(row_factory=class_row(Company))
            await cur.execute(query, {**params, "id": company_id})
            return await cur.fetchone()

        company = await self._db.run(work)
        if company is None:
            raise CompanyNotFound(f"unknown company {company_id!r}")
        return company
