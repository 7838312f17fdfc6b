"""``wapool adopt --from-postgres``: a device in whatsmeow's PostgreSQL schema (made by neonize
on a PostgreSQL URL) is adopted as the same device, read-only; a role without privileges on
the source gets one line and changes nothing."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.adopt.checks import (
    assert_restores_elsewhere,
    assert_same_device,
    assert_verify_equal,
    changed_nothing,
)
from tests.adopt.sources import BaileysState, baileys_state, extra_rows, postgres_store
from tests.conftest import run_cli
from wapool.db.pool import Database
from wapool.devdb import Cluster
from wapool.settings import Settings
from wapool.store.working_store import store_path

pytestmark = pytest.mark.timeout(900)  # a cold cache installs Baileys once
_counter = itertools.count()


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> BaileysState:
    return baileys_state(tmp_path_factory.mktemp("baileys"), "5521912345678")


@pytest.fixture
def source_url(running_cluster: Cluster, device: BaileysState) -> Iterator[str]:
    name = f"whatsmeow_src_{os.getpid()}_{next(_counter)}"
    admin = running_cluster.url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = running_cluster.url(name)
    postgres_store(url, device.taken)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _env(database_url: str, settings: Settings) -> dict[str, str]:
    return {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(settings.state_dir)}


def _source_state(url: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(url) as conn:
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_name LIKE 'whatsmeow%' ORDER BY 1"
            )
        ]
        return [
            (
                t,
                *conn.execute(
                    sql.SQL(
                        "SELECT count(*), coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {} x"
                    ).format(sql.Identifier(t))
                ).fetchone(),  # type: ignore[misc]
            )
            for t in tables
        ]


async def test_device_is_adopted_from_whatsmeow_on_postgres(
    device: BaileysState,
    source_url: str,
    db: Database,
    database_url: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    untouched = _source_state(source_url)
    env = _env(database_url, settings)
    assert run_cli("company", "add", "acme", "--disabled", env=env, cwd=tmp_path).returncode == 0
    nojid = run_cli("adopt", "acme", "--from-postgres", source_url, env=env, cwd=tmp_path)
    assert (nojid.returncode, nojid.stderr.strip()) == (
        1,
        "wapool: error: --from-postgres needs --jid (one device at a time)",
    )
    done = run_cli(
        "adopt", "acme", "--from-postgres", source_url, "--jid", device.jid, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert f"adopted device {device.jid} from postgres 127.0.0.1/" in done.stdout
    assert _source_state(source_url) == untouched
    counts = {
        line.split()[0]: (int(line.split()[1]), int(line.split()[2]))
        for line in done.stdout.splitlines()
        if line.strip().startswith("whatsmeow_")
    }
    for table, rows in extra_rows(device.jid).items():
        assert counts[table] == (len(rows), len(rows)), table
    assert counts["whatsmeow_pre_keys"] == (30, 30)
    path = store_path(settings.state_dir, "acme")
    assert_same_device(path, device, tmp_path / "loaded")
    assert_verify_equal("acme", env, tmp_path)
    await assert_restores_elsewhere(db, "acme", settings.state_dir, tmp_path / "host2", device)


def test_role_without_privileges_gets_one_line(
    device: BaileysState,
    source_url: str,
    running_cluster: Cluster,
    database_url: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    role = f"nopriv_{os.getpid()}"
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'hunter2-secret'").format(sql.Identifier(role))
        )
    try:
        dsn = source_url.replace("postgres@", f"{role}:hunter2-secret@", 1)
        assert role in dsn
        env = _env(database_url, settings)
        assert (
            run_cli("company", "add", "acme", "--disabled", env=env, cwd=tmp_path).returncode == 0
        )
        result = run_cli(
            "adopt", "acme", "--from-postgres", dsn, "--jid", device.jid, env=env, cwd=tmp_path
        )
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "the role may not read the whatsmeow tables" in lines[0], lines
        assert "hunter2" not in result.stderr + result.stdout
        changed_nothing(database_url, "acme", settings.state_dir)
    finally:
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
