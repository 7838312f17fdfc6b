"""Shared fixtures: one throwaway PostgreSQL cluster per run, a migrated template database
cloned per test, a fault proxy in front of it, settings pointing at either, and daemons in
child processes. Each test is marked ``unit``, ``postgres`` or ``process`` (see markers.py)."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests import markers
from tests.daemon import Daemons, scrubbed_env
from wapool.db.migrations import migrate
from wapool.db.pool import Database
from wapool.devdb import Cluster, free_port
from wapool.errors import DatabaseUnavailable
from wapool.settings import Settings, load_settings
from wapool.store.capture import install_capture
from wapool.store.dump import dump_rows
from wapool.store.working_store import connect, prepare_dir
from wapool.testing.fault_proxy import FaultProxy
from wapool.whatsapp.neonize_store import create_schema

TEMPLATE = "wapool_template"
_counter = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    markers.classify(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("process"):
        return (yield)
    with markers.no_child_processes(item.nodeid):
        return (yield)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Starts ``wapool run`` (or another command) in child processes; ends them all after the
    test. Request it after the database fixtures, so daemons stop before their database goes."""
    started = Daemons(tmp_path)
    yield started
    started.close()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    # Not under pytest's 0700 temp folders: the postgres user must reach the data folder.
    root = Path(tempfile.mkdtemp(prefix="wapool-test-pg-"))
    pg = Cluster(root, free_port(), durable=False)
    pg.start()
    with psycopg.connect(pg.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))

    async def migrate_template() -> None:
        async with await psycopg.AsyncConnection.connect(pg.url(TEMPLATE)) as conn:
            await migrate(conn)

    asyncio.run(migrate_template())
    yield pg
    pg.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def running_cluster(cluster: Cluster) -> Cluster:
    """The shared cluster, started again if an earlier test stopped it."""
    cluster.start()
    return cluster


@pytest.fixture
def database_url(running_cluster: Cluster) -> Iterator[str]:
    """A fresh database cloned from the migrated template, dropped after the test."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    admin = running_cluster.url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    yield running_cluster.url(name)
    running_cluster.start()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_database_url(running_cluster: Cluster) -> Iterator[str]:
    """A fresh database that has never been migrated."""
    name = f"e_{os.getpid()}_{next(_counter)}"
    admin = running_cluster.url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield running_cluster.url(name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
async def proxy(running_cluster: Cluster) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", running_cluster.port) as fault_proxy:
        yield fault_proxy


def proxied(url: str, proxy: FaultProxy) -> str:
    """The same database, reached through the fault proxy."""
    host_port = url.split("@", 1)[1].split("/", 1)
    return url.replace(host_port[0], f"127.0.0.1:{proxy.port}")


def make_settings(url: str | None, state_dir: Path, **overrides: Any) -> Settings:
    return load_settings(None, database_url=url, state_dir=state_dir, **overrides)


@pytest.fixture(scope="session")
def whatsmeow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working store with whatsmeow's real schema, created by neonize once per run."""
    path = tmp_path_factory.mktemp("whatsmeow") / "template.db"
    assert create_schema([path]) == {path: []}
    return path


def new_store(template: Path, state_dir: Path, company_id: str) -> Path:
    """A fresh working store for a company: the neonize-made schema plus change capture."""
    path = prepare_dir(state_dir, company_id)
    shutil.copyfile(template, path)
    conn = connect(path)
    try:
        install_capture(conn)  # queues every existing row: the first mirror publishes them
    finally:
        conn.close()
    return path


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path / "state")


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """wapool's own pooled access to the per-test database."""
    database = Database.from_settings(settings)
    await database.open(wait=True)
    yield database
    await database.close()


async def mirror_once(db: Database, company: str, path: Path) -> None:
    """Push everything a working store has logged to PostgreSQL, as the daemon's mirror would."""
    from wapool.store.mirror import Mirror

    mirror = Mirror(db)
    mirror.add(company, path)
    try:
        assert await mirror.drain(30), f"{company}: the mirror did not drain"
    finally:
        mirror.close()


async def wait_until_up(db: Database, timeout: float = 15) -> None:
    """After a restored outage: the pool reconnects within about a second; wait for it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await db.fetch("SELECT 1")
            return
        except DatabaseUnavailable:
            assert asyncio.get_running_loop().time() < deadline, "PostgreSQL did not come back"
            await asyncio.sleep(0.1)


def dump_store(path: Path) -> dict[tuple[str, str], str]:
    """A working store's rows as the mirror encodes them."""
    conn = connect(path)
    try:
        return dump_rows(conn)
    finally:
        conn.close()


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``wapool ARGS`` in a child process with only the given WAPOOL_ settings."""
    return subprocess.run(
        [sys.executable, "-m", "wapool", *args],
        env=scrubbed_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
