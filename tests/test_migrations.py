from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import run_cli
from wapool.db.migrations import check_schema, latest_version, migrate
from wapool.errors import ExitCode, MigrationError, SchemaNotMigrated, SchemaTooNew

pytestmark = pytest.mark.timeout(60)


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def test_migrate_is_idempotent(empty_database_url: str) -> None:
    async with await _connect(empty_database_url) as conn:
        first = await migrate(conn)
        second = await migrate(conn)
        assert [m.version for m in first] == list(range(1, latest_version() + 1))
        assert second == []
        assert await check_schema(conn) == latest_version()
        cur = await conn.execute("SELECT count(*) FROM wapool_migrations")
        assert await cur.fetchone() == (latest_version(),)


async def test_concurrent_migrations_apply_each_file_once(empty_database_url: str) -> None:
    conns = [await _connect(empty_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    assert sorted(len(r) for r in results) == [0, 0, 0, latest_version()]


def test_concurrent_cli_migrations(empty_database_url: str, tmp_path: Path) -> None:
    env = {"WAPOOL_DATABASE_URL": empty_database_url, "WAPOOL_STATE_DIR": str(tmp_path)}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run_cli("migrate", env=env, cwd=tmp_path), range(3)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    outputs = sorted(r.stdout for r in results)
    assert sum("applied" in o for o in outputs) == 1
    assert sum("nothing to do" in o for o in outputs) == 2


async def test_newer_schema_is_refused(database_url: str) -> None:
    async with await _connect(database_url) as conn:
        await conn.execute(
            "INSERT INTO wapool_migrations (version, name, sha256) VALUES (999, 'future', 'x')"
        )
        with pytest.raises(SchemaTooNew, match="version 999"):
            await check_schema(conn)
        with pytest.raises(SchemaTooNew):
            await migrate(conn)


async def test_unmigrated_database_is_reported(empty_database_url: str) -> None:
    async with await _connect(empty_database_url) as conn:
        with pytest.raises(SchemaNotMigrated, match="run `wapool migrate`"):
            await check_schema(conn)


async def test_edited_migration_is_detected(database_url: str) -> None:
    async with await _connect(database_url) as conn:
        await conn.execute("UPDATE wapool_migrations SET sha256 = 'edited' WHERE version = 1")
        with pytest.raises(MigrationError, match="differs"):
            await migrate(conn)


def test_run_refuses_newer_schema_with_its_exit_code(database_url: str, tmp_path: Path) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO wapool_migrations (version, name, sha256) VALUES (999, 'future', 'x')"
        )
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path)}
    result = run_cli("run", env=env, cwd=tmp_path)
    assert result.returncode == ExitCode.SCHEMA_TOO_NEW
    assert "wapool: error: database schema is at version 999" in result.stderr


def test_run_refuses_unmigrated_database(empty_database_url: str, tmp_path: Path) -> None:
    env = {"WAPOOL_DATABASE_URL": empty_database_url, "WAPOOL_STATE_DIR": str(tmp_path)}
    result = run_cli("run", env=env, cwd=tmp_path)
    assert result.returncode == ExitCode.SCHEMA_NOT_MIGRATED
    assert "run `wapool migrate`" in result.stderr


_CATALOG = """
SELECT 'column', c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
       || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
UNION ALL
SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'function', p.proname, pg_get_functiondef(p.oid)
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)
FROM pg_trigger WHERE NOT tgisinternal
ORDER BY 1, 2
"""


def _catalog(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(_CATALOG).fetchall()
    return [r for r in rows if "wapool_migrations" not in r[1]]


async def test_migrations_reproduce_the_canonical_schema(
    empty_database_url: str, database_url: str
) -> None:
    canonical = resources.files("wapool.db").joinpath("schema.sql").read_text("utf-8")
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(canonical)  # type: ignore[call-overload]
    from_canonical = _catalog(empty_database_url)
    from_migrations = _catalog(database_url)
    assert from_canonical, "the canonical schema defines nothing"
    assert from_migrations == from_canonical


def test_a_copys_rows_go_with_it_and_only_its_own(database_url: str) -> None:
    """store_rows has no foreign key (0016): a trigger removes a copy's rows with the copy,
    also when the company itself is removed, and leaves every other company's rows."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for company in ("gone", "kept", "copy-gone"):
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (company,))
            conn.execute(
                "INSERT INTO store_copies (company_id, store_uuid, schema_version, "
                "schema_fingerprint, schema_ddl) VALUES (%s, gen_random_uuid(), 1, 'f', '')",
                (company,),
            )
            for n in range(3):
                conn.execute(
                    "INSERT INTO store_rows (company_id, tbl, pk, image, written_at) "
                    "VALUES (%s, 't', %s, 'i', now())",
                    (company, str(n)),
                )
        conn.execute("DELETE FROM companies WHERE id = 'gone'")
        conn.execute("DELETE FROM store_copies WHERE company_id = 'copy-gone'")
        left = conn.execute(
            "SELECT company_id, count(*) FROM store_rows GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert left == [("kept", 3)]
