"""``wapool verify``, ``export`` and ``import`` as an operator runs them."""

from __future__ import annotations

import random
from pathlib import Path

import psycopg
import pytest

from tests.conftest import dump_store, mirror_once, new_store, run_cli
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.settings import Settings
from wapool.store.working_store import connect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def mirrored(
    db: Database, database_url: str, whatsmeow_template: Path, settings: Settings
) -> Path:
    add_companies(database_url, "962302", "other")
    path = new_store(whatsmeow_template, settings.state_dir, "962302")
    writer = writer_for(path, 21)
    for _ in range(150):
        writer.random_transaction()
    writer.conn.close()
    await mirror_once(db, "962302", path)
    return path


def _env(database_url: str, settings: Settings) -> dict[str, str]:
    return {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(settings.state_dir)}


def test_verify_reports_equal_then_divergence(
    mirrored: Path, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    env = _env(database_url, settings)
    result = run_cli("verify", "962302", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("962302: EQUAL")
    assert "whatsmeow_sessions" in result.stdout
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM store_rows WHERE ctid IN (SELECT ctid FROM store_rows "
            "WHERE tbl = 'whatsmeow_sessions' LIMIT 1)"
        )
    result = run_cli("verify", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "962302: DIFFERENT" in result.stdout
    line = next(x for x in result.stdout.splitlines() if "whatsmeow_sessions" in x)
    assert line.split()[3] == "1"  # one row missing in PostgreSQL
    unknown = run_cli("verify", "nope", env=env, cwd=tmp_path)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "wapool: error: unknown company 'nope'",
    )


def test_export_import_round_trip_and_refusals(
    mirrored: Path, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    env = _env(database_url, settings)
    original = dump_store(mirrored)
    backup = tmp_path / "962302.wapool"
    exported = run_cli("export", "962302", str(backup), env=env, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    again = run_cli("export", "962302", str(backup), env=env, cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr

    # The company is paired (the copy holds a device): importing needs --force.
    refused = run_cli("import", "962302", str(backup), env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert "is paired; importing replaces its session: use --force" in refused.stderr

    # Into another, unpaired company: no force needed; it gets the same content.
    new_store_dir = settings.state_dir / "other"
    imported = run_cli("import", "other", str(backup), env=env, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert not new_store_dir.exists()  # no working store here: the daemon restores it later
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM store_rows WHERE company_id = 'other'").fetchone()
        audit = conn.execute("SELECT company_id, forced FROM store_imports").fetchall()
    assert rows == (len(original),)
    assert audit == [("other", False)]

    forced = run_cli("import", "962302", str(backup), "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert dump_store(mirrored) == original  # the local store took the imported content
    verified = run_cli("verify", "962302", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout


@pytest.mark.parametrize("damage", ["garbage", "truncated", "tampered", "plain-sqlite", "missing"])
def test_bad_files_are_refused_and_change_nothing(
    mirrored: Path, database_url: str, settings: Settings, tmp_path: Path, damage: str
) -> None:
    env = _env(database_url, settings)
    backup = tmp_path / "backup.wapool"
    assert run_cli("export", "962302", str(backup), env=env, cwd=tmp_path).returncode == 0
    data = backup.read_bytes()
    if damage == "garbage":
        backup.write_bytes(random.Random(1).randbytes(len(data)))
    elif damage == "truncated":
        backup.write_bytes(data[: len(data) // 2])
    elif damage == "tampered":
        conn = connect(backup, wal=False)
        conn.execute(
            "UPDATE whatsmeow_sessions SET session = x'00' WHERE rowid = (SELECT min(rowid) FROM whatsmeow_sessions)"
        )
        conn.close()
    elif damage == "plain-sqlite":
        backup.unlink()
        conn = connect(backup, wal=False)
        conn.execute("CREATE TABLE t (x)")
        conn.close()
    else:
        backup.unlink()
    with psycopg.connect(database_url) as conn:
        before = conn.execute(
            "SELECT md5(string_agg(pk || image, ',' ORDER BY tbl, pk)) FROM store_rows"
        ).fetchone()
    local_before = dump_store(mirrored)
    result = run_cli("import", "962302", str(backup), "--force", env=env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("wapool: error: ")
    assert "Traceback" not in result.stderr
    with psycopg.connect(database_url) as conn:
        after = conn.execute(
            "SELECT md5(string_agg(pk || image, ',' ORDER BY tbl, pk)) FROM store_rows"
        ).fetchone()
    assert after == before
    assert dump_store(mirrored) == local_before
