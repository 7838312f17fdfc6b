"""``wapool adopt --from-sqlite``: stores written by two older neonize wheels are adopted as
the same device, upgraded through change capture with nothing lost; a truncated store is
refused in one line and changes nothing."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.adopt import toolchains
from tests.adopt.checks import (
    assert_restores_elsewhere,
    assert_same_device,
    assert_verify_equal,
    changed_nothing,
    fingerprint,
)
from tests.adopt.sources import BaileysState, all_rows, baileys_state, keys_by_table, old_store
from tests.conftest import run_cli
from wapool.db.pool import Database
from wapool.leases import Leases
from wapool.settings import Settings
from wapool.store.working_store import store_path

pytestmark = pytest.mark.timeout(900)  # a cold cache installs the toolchains once


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> BaileysState:
    return baileys_state(tmp_path_factory.mktemp("baileys"), "5511987654321")


def _env(database_url: str, settings: Settings) -> dict[str, str]:
    return {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(settings.state_dir)}


@pytest.mark.parametrize("version", toolchains.OLD_NEONIZE)
async def test_old_neonize_store_is_adopted_as_the_same_device(
    version: str,
    device: BaileysState,
    db: Database,
    database_url: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    source = tmp_path / "bot" / "db.sqlite3"
    source.parent.mkdir()
    old_store(version, source, device.taken)
    with closing(sqlite3.connect(source)) as conn:
        before = keys_by_table(conn, device.jid)
        (old_version,) = conn.execute("SELECT version FROM whatsmeow_version").fetchone()
    untouched = fingerprint(source)
    env = _env(database_url, settings)
    added = run_cli("company", "add", "acme", "--disabled", env=env, cwd=tmp_path)
    assert added.stdout.strip() == "added company acme (disabled)", added.stderr

    dry = run_cli("adopt", "acme", "--from-sqlite", str(source), "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"would adopt device {device.jid} from sqlite {source}")
    changed_nothing(database_url, "acme", settings.state_dir)

    done = run_cli("adopt", "acme", "--from-sqlite", str(source), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"adopted device {device.jid}" in done.stdout
    assert fingerprint(source) == untouched  # the source was never written

    path = store_path(settings.state_dir, "acme")
    with closing(sqlite3.connect(path)) as conn:
        after = keys_by_table(conn, device.jid)
        (new_version,) = conn.execute("SELECT version FROM whatsmeow_version").fetchone()
    assert (old_version, new_version) == (14, 15)  # whatsmeow upgraded it
    for table in sorted(set(before) - {"whatsmeow_version"}):
        assert after[table] == before[table], table  # nothing lost, by key
    assert sum(len(v) for v in before.values()) > 100
    assert_same_device(path, device, tmp_path / "loaded")
    assert_verify_equal("acme", env, tmp_path)
    await assert_restores_elsewhere(db, "acme", settings.state_dir, tmp_path / "host2", device)
    if version != toolchains.OLD_NEONIZE[0]:
        return  # the refusals below do not depend on the source's version: checked once

    again = run_cli("adopt", "acme", "--from-sqlite", str(source), env=env, cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip().endswith(
        "is already paired; adopting replaces its session: use --force to overwrite it"
    )
    other = run_cli("company", "add", "other", env=env, cwd=tmp_path)
    assert other.returncode == 0
    held = run_cli("adopt", "other", "--from-sqlite", str(source), env=env, cwd=tmp_path)
    assert held.returncode == 1
    assert f"device {device.jid} is already held by company acme" in held.stderr
    assert len(held.stderr.strip().splitlines()) == 1
    forced = run_cli(
        "adopt", "acme", "--from-sqlite", str(source), "--force", env=env, cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stderr
    assert "(replacing its paired session)" in forced.stdout
    assert_verify_equal("acme", env, tmp_path)


async def test_truncated_store_is_refused_in_one_line(
    device: BaileysState, db: Database, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    whole = tmp_path / "whole.db"
    old_store(toolchains.OLD_NEONIZE[0], whole, device.taken)
    source = tmp_path / "bot" / "db.sqlite3"
    source.parent.mkdir()
    data = whole.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    untouched = fingerprint(source)
    env = _env(database_url, settings)
    assert run_cli("company", "add", "acme", "--disabled", env=env, cwd=tmp_path).returncode == 0
    result = run_cli("adopt", "acme", "--from-sqlite", str(source), env=env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"wapool: error: sqlite {source}: "), lines
    assert "damaged" in lines[0] or "not a readable SQLite store" in lines[0], lines
    assert fingerprint(source) == untouched
    changed_nothing(database_url, "acme", settings.state_dir)


async def test_store_with_two_devices_gives_only_the_chosen_one(
    device: BaileysState, db: Database, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    second = baileys_state(tmp_path, "5511911112222")
    source = tmp_path / "bot" / "db.sqlite3"
    source.parent.mkdir()
    old_store(toolchains.OLD_NEONIZE[0], source, device.taken)
    with closing(sqlite3.connect(source)) as conn, conn:
        for table, row in all_rows(second.taken):
            if table in ("whatsmeow_lid_map", "whatsmeow_version"):
                continue  # shared tables: the first device's rows are there already
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            row = {c: v for c, v in row.items() if c in columns}
            conn.execute(
                f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
        wanted = keys_by_table(conn, second.jid)
    env = _env(database_url, settings)
    assert run_cli("company", "add", "acme", "--disabled", env=env, cwd=tmp_path).returncode == 0
    ambiguous = run_cli("adopt", "acme", "--from-sqlite", str(source), env=env, cwd=tmp_path)
    assert ambiguous.returncode == 1
    assert ambiguous.stderr.strip() == (
        f"wapool: error: sqlite {source}: holds 2 devices "
        f"({', '.join(sorted([device.jid, second.jid]))}): choose with --jid"
    )
    changed_nothing(database_url, "acme", settings.state_dir)
    done = run_cli(
        "adopt", "acme", "--from-sqlite", str(source), "--jid", second.jid, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    path = store_path(settings.state_dir, "acme")
    with closing(sqlite3.connect(path)) as conn:
        devices = [r[0] for r in conn.execute("SELECT jid FROM whatsmeow_device")]
        others = conn.execute(
            "SELECT count(*) FROM whatsmeow_sessions WHERE our_jid <> ?", (second.jid,)
        ).fetchone()
        got = keys_by_table(conn, second.jid)
    assert (devices, others) == ([second.jid], (0,))
    for table in sorted(set(wanted) - {"whatsmeow_version"}):
        assert got[table] == wanted[table], table
    assert_same_device(path, second, tmp_path / "loaded")


async def test_a_company_a_daemon_drives_is_not_adopted(
    device: BaileysState, db: Database, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "db.sqlite3"
    old_store(toolchains.OLD_NEONIZE[0], source, device.taken)
    env = _env(database_url, settings)
    assert run_cli("company", "add", "acme", env=env, cwd=tmp_path).returncode == 0
    daemon = Leases(db, "wapool run on host-a (pid 1)", 60)
    assert await daemon.acquire(["acme"])
    result = run_cli("adopt", "acme", "--from-sqlite", str(source), env=env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is driven by wapool run on host-a (pid 1)" in lines[0]
    changed_nothing(database_url, "acme", settings.state_dir)
