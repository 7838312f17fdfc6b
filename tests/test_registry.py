from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.conftest import make_settings, proxied, run_cli, wait_until_up
from wapool.cache import FallbackCache
from wapool.clock import ManualClock
from wapool.db.pool import Database
from wapool.errors import (
    CompanyExists,
    CompanyNotFound,
    DatabaseUnavailable,
    ExitCode,
    InvalidCompanyId,
)
from wapool.registry.company import Company, validate_company_id
from wapool.registry.fallback import Registry
from wapool.registry.repository import CompanyRepository
from wapool.testing.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("good", ["962302", "acme-bakery", "a", "x_1", "0" * 63])
def test_valid_ids(good: str) -> None:
    assert validate_company_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "Acme", "-acme", "acme bakery", "a/b", "..", "0" * 64, "ação", "a\nb"]
)
def test_invalid_ids(bad: str) -> None:
    with pytest.raises(InvalidCompanyId, match="invalid company id"):
        validate_company_id(bad)


async def test_crud(db: Database) -> None:
    repo = CompanyRepository(db)
    added = await repo.add("962302", "Acme")
    assert (added.id, added.display_name, added.enabled, added.paired_jid) == (
        "962302", "Acme", True, None,
    )  # fmt: skip
    with pytest.raises(CompanyExists, match="already exists"):
        await repo.add("962302")
    assert not (await repo.set_enabled("962302", False)).enabled
    assert (await repo.set_enabled("962302", True)).enabled
    paired = await repo.set_paired_jid("962302", "5511999999999.0:1@s.whatsapp.net")
    assert paired.paired_jid == "5511999999999.0:1@s.whatsapp.net"
    assert paired.updated_at >= added.updated_at
    await repo.add("acme-2")
    assert [c.id for c in await repo.list()] == ["962302", "acme-2"]

    await repo.remove("acme-2")
    assert [c.id for c in await repo.list()] == ["962302"]
    assert [c.id for c in await repo.list(include_removed=True)] == ["962302", "acme-2"]
    with pytest.raises(CompanyExists, match="--restore"):
        await repo.add("acme-2")
    restored = await repo.add("acme-2", restore=True)
    assert restored.removed_at is None


async def test_unknown_and_invalid_ids_change_nothing(db: Database) -> None:
    repo = CompanyRepository(db)
    await repo.add("962302")
    before = await repo.list(include_removed=True)
    for action in (repo.remove, repo.get):
        with pytest.raises(CompanyNotFound, match="unknown company 'nope'"):
            await action("nope")
    with pytest.raises(CompanyNotFound):
        await repo.set_enabled("nope", False)
    with pytest.raises(InvalidCompanyId):
        await repo.set_enabled("NOPE", False)
    with pytest.raises(InvalidCompanyId):
        await repo.add("Bad Id")
    assert await repo.list(include_removed=True) == before


def test_cli_company_commands(database_url: str, tmp_path: Path) -> None:
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path)}

    def cli(*args: str) -> tuple[int, str, str]:
        result = run_cli("company", *args, env=env, cwd=tmp_path)
        return result.returncode, result.stdout.strip(), result.stderr.strip()

    assert cli("add", "962302", "--name", "Acme Bakery") == (0, "added company 962302", "")
    assert cli("add", "962302") == (1, "", "wapool: error: company '962302' already exists")
    code, _, err = cli("add", "Not Valid")
    assert code == 1
    assert err.startswith("wapool: error: invalid company id 'Not Valid'")
    assert cli("disable", "962302") == (0, "disabled company 962302", "")
    assert cli("enable", "ghost") == (1, "", "wapool: error: unknown company 'ghost'")
    code, out, _ = cli("list")
    assert code == 0
    assert out.splitlines()[1].split()[:5] == ["962302", "Acme", "Bakery", "disabled", "-"]
    assert cli("remove", "962302") == (0, "removed company 962302", "")
    code, out, _ = cli("list", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = cli("list", "--all", "--json")
    assert [c["id"] for c in json.loads(out)] == ["962302"]
    assert json.loads(out)[0]["removed_at"] is not None
    assert run_cli("company", env=env, cwd=tmp_path).returncode == ExitCode.USAGE


def test_display_names_with_control_characters_are_refused(
    database_url: str, tmp_path: Path
) -> None:
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path)}
    for name, code in (
        ("Acme\x1b[2J\x1b[31mPWNED", "U+001B"),
        ("Acme\nfake-co  Fake  enabled", "U+000A"),
        ("Acme\u202eyrekab", "U+202E"),
    ):
        result = run_cli("company", "add", "acme", "--name", name, env=env, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.strip().startswith(
            f"wapool: error: display name holds control characters ({code}"
        )
    kept = run_cli("company", "add", "acme", "--name", "Ácme 🍞 Café", env=env, cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    # A name written straight into the table is shown escaped, never sent raw.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE companies SET display_name = 'x\x1b[2Jy' WHERE id = 'acme'")
    listed = run_cli("company", "list", env=env, cwd=tmp_path)
    assert "\x1b" not in listed.stdout
    assert "x\\u001b[2Jy" in listed.stdout


async def test_registry_served_from_cache_during_outage_then_expires(
    database_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    settings = make_settings(
        proxied(database_url, proxy), tmp_path, db_pool_timeout_seconds=1.0,
        db_query_timeout_seconds=1.0, db_connect_timeout_seconds=1,
    )  # fmt: skip
    clock = ManualClock()
    db = Database.from_settings(settings)
    await db.open(wait=True)
    try:
        registry = Registry(
            CompanyRepository(db), FallbackCache[str, list[Company]](300, 100, clock)
        )
        await registry.repository.add("962302")
        await registry.repository.add("off")
        await registry.repository.set_enabled("off", False)
        assert [c.id for c in await registry.active_companies()] == ["962302"]

        await proxy.refuse()
        clock.advance(299)
        assert [c.id for c in await registry.active_companies()] == ["962302"]
        assert not db.health.up
        assert registry.cache.stats().hits == 1
        assert registry.cache.stats().last_hit_age_seconds == pytest.approx(299)

        clock.advance(2)
        with pytest.raises(DatabaseUnavailable, match="no cached registry younger than 300 s"):
            await registry.active_companies()
        assert registry.cache.stats().misses == 1

        await proxy.restore()
        await wait_until_up(db)
        assert [c.id for c in await registry.active_companies()] == ["962302"]
        assert db.health.up
    finally:
        await db.close()
