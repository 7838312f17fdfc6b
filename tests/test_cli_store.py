"""``wapool verify``, ``export`` and ``import`` as an operator runs them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.conftest import dump_store, mirror_once, new_store, run_cli
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.leases import Leases
from wapool.settings import Settings
from wapool.store import devices
from wapool.store.export_file import read_export
from wapool.store.import_lease import CompanyDriven, held_for_import
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
    exported = run_cli("export", "962302", str(backup), "--plaintext", env=env, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    again = run_cli("export", "962302", str(backup), "--plaintext", env=env, cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr

    # The company is paired (the copy holds a device): importing needs --force.
    refused = run_cli("import", "962302", str(backup), env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert "is paired; importing replaces its session: use --force" in refused.stderr

    forced = run_cli("import", "962302", str(backup), "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert dump_store(mirrored) == original  # the local store took the imported content
    verified = run_cli("verify", "962302", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout

    # Moving the device to another company: only once the old one is removed.
    new_store_dir = settings.state_dir / "other"
    assert run_cli("company", "remove", "962302", env=env, cwd=tmp_path).returncode == 0
    moved = run_cli(
        "import", "other", str(backup), "--from-company", "962302", env=env, cwd=tmp_path
    )
    assert moved.returncode == 0, moved.stderr
    assert not new_store_dir.exists()  # no working store here: the daemon restores it later
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM store_rows WHERE company_id = 'other'").fetchone()
        audit = conn.execute("SELECT company_id, forced FROM store_imports ORDER BY id").fetchall()
        leases = conn.execute("SELECT count(*) FROM company_leases").fetchone()
    assert rows == (len(original),)
    assert audit == [("962302", True), ("other", False)]
    assert leases == (0,)  # each import released the lease it held


def test_export_of_another_company_is_refused_unless_named(
    mirrored: Path, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Company A's export into company B would give B A's device and keys."""
    env = _env(database_url, settings)
    backup = tmp_path / "962302.wapool"
    assert (
        run_cli("export", "962302", str(backup), "--plaintext", env=env, cwd=tmp_path).returncode
        == 0
    )
    jid = devices.jids(read_export(backup).rows)[0]
    add_companies(database_url, "third")

    mismatch = run_cli("import", "other", str(backup), env=env, cwd=tmp_path)
    wrong_name = run_cli(
        "import", "other", str(backup), "--from-company", "third", env=env, cwd=tmp_path
    )
    # Named, but 962302 still holds the device (in its PostgreSQL copy).
    held = run_cli(
        "import", "other", str(backup), "--from-company", "962302", env=env, cwd=tmp_path
    )
    # Held only as a paired JID (written without the agent part) counts too.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE companies SET removed_at = now() WHERE id = '962302'")
        conn.execute(
            "UPDATE companies SET paired_jid = %s WHERE id = 'third'", (jid.replace(".0:", ":"),)
        )
    paired = run_cli(
        "import", "other", str(backup), "--from-company", "962302", "--force", env=env,
        cwd=tmp_path,
    )  # fmt: skip
    for result in (mismatch, wrong_name, held, paired):
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "the file is an export of company '962302', not 'other'" in mismatch.stderr
    assert "--from-company 962302" in mismatch.stderr
    assert "the file is an export of company '962302', not 'third'" in wrong_name.stderr
    assert f"already held by company 962302 ({jid})" in held.stderr
    assert f"already held by company third ({jid.replace('.0:', ':')})" in paired.stderr
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM store_rows WHERE company_id = 'other'").fetchone()
        imports = conn.execute("SELECT count(*) FROM store_imports").fetchone()
    assert (rows, imports) == ((0,), (0,))


async def test_import_holds_the_lease_while_it_works(mirrored: Path, db: Database) -> None:
    async with held_for_import(db, "962302", 30) as fence:
        daemon = Leases(db, "node-b", 30)
        assert await daemon.acquire(["962302"]) == {}  # no daemon starts it mid-import
        with pytest.raises(CompanyDriven, match=r"is driven by wapool import on .* \(pid "):
            async with held_for_import(db, "962302", 30, holder="another import"):
                pass
        assert fence.epochs == {"962302": 1}
    assert await db.fetch("SELECT * FROM company_leases") == []


def _daemon(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WAPOOL_")}
    return subprocess.Popen(
        [sys.executable, "-m", "wapool", "run"], env={**base, **env}, cwd=cwd, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _lease_holder(database_url: str) -> str | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT holder FROM company_leases WHERE company_id = '962302' AND expires_at > now()"
        ).fetchone()
    return None if row is None else str(row[0])


def _until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_import_refuses_while_a_daemon_drives_the_company(
    mirrored: Path, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    env = _env(database_url, settings)
    backup = tmp_path / "962302.wapool"
    assert (
        run_cli("export", "962302", str(backup), "--plaintext", env=env, cwd=tmp_path).returncode
        == 0
    )
    daemon_env = env | {"WAPOOL_WHATSAPP_BACKEND": "simulated", "WAPOOL_NODE_NAME": "node-a"}
    daemon = _daemon(daemon_env, tmp_path)
    try:
        _until(lambda: _lease_holder(database_url) == "node-a", "the daemon to drive 962302")
        refused = run_cli("import", "962302", str(backup), "--force", env=env, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
        assert refused.stderr.startswith("wapool: error: company '962302' is driven by node-a")
        assert "run `wapool company disable 962302`" in refused.stderr
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM store_imports").fetchone() == (0,)

        # The documented way: disable (the daemon stops, drains, releases), import, enable.
        assert run_cli("company", "disable", "962302", env=env, cwd=tmp_path).returncode == 0
        _until(lambda: _lease_holder(database_url) is None, "the daemon to release 962302")
        imported = run_cli("import", "962302", str(backup), "--force", env=env, cwd=tmp_path)
        assert imported.returncode == 0, imported.stderr
        assert run_cli("company", "enable", "962302", env=env, cwd=tmp_path).returncode == 0
        _until(lambda: _lease_holder(database_url) == "node-a", "the daemon to take 962302 back")
        verified = run_cli("verify", "962302", env=env, cwd=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, err


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("garbage", "not a wapool export (not an SQLite file)"),
        ("truncated", "damaged export: "),
        ("tampered", "damaged export: rows differ from what was exported in table "
         "whatsmeow_sessions"),
        ("row-text", "damaged export: table whatsmeow_device is unreadable (a text value is "
         "not UTF-8)"),
        ("plain-sqlite", "not a wapool export (format 1)"),
        ("missing", "no such file"),
        ("directory", "is a directory, not an export file"),
        ("device", "is a device, not an export file"),
    ],
)  # fmt: skip
def test_bad_files_are_refused_and_change_nothing(
    mirrored: Path, database_url: str, settings: Settings, tmp_path: Path, damage: str,
    expected: str,
) -> None:  # fmt: skip
    env = _env(database_url, settings)
    backup = tmp_path / "backup.wapool"
    assert (
        run_cli("export", "962302", str(backup), "--plaintext", env=env, cwd=tmp_path).returncode
        == 0
    )
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
    elif damage == "row-text":
        # One byte rots inside a row (the device's push name): no longer valid UTF-8.
        assert data.count(b"Acme") == 1
        at = data.index(b"Acme")
        backup.write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    elif damage == "plain-sqlite":
        backup.unlink()
        conn = connect(backup, wal=False)
        conn.execute("CREATE TABLE t (x)")
        conn.close()
    elif damage == "directory":
        backup.unlink()
        backup.mkdir()
    elif damage == "device":
        backup = Path("/dev/null")
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
    assert lines[0].startswith(f"wapool: error: {backup}: ")
    assert expected in lines[0]
    assert len(lines[0]) < 200
    assert "Traceback" not in result.stderr
    assert "json_array" not in result.stderr
    with psycopg.connect(database_url) as conn:
        after = conn.execute(
            "SELECT md5(string_agg(pk || image, ',' ORDER BY tbl, pk)) FROM store_rows"
        ).fetchone()
    assert after == before
    assert dump_store(mirrored) == local_before


def test_verify_calls_an_older_state_of_the_same_store_stale(
    mirrored: Path, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Another node drove the company since this host's store was handed over."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE store_copies SET applied_seq = applied_seq + 5")
    result = run_cli("verify", env=_env(database_url, settings), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("962302: STALE")
