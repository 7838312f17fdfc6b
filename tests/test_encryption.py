"""Encryption at rest on a real PostgreSQL and real working stores: no private key byte in a
full pg_dump, verify equal, restore on a new host as the same device, moved ciphertext refused
loudly, rotation without rewriting rows, online re-encryption of a plaintext copy."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import dump_store, make_settings, mirror_once, new_store, run_cli
from tests.daemon import Daemons
from tests.sealing import leaks, new_host, pg_dump, secrets_of
from tests.test_mirror import add_companies, writer_for
from tests.test_sealed_messages import inbound, outbound
from wapool.crypto import keyring, rotation
from wapool.crypto.envelope import DataKey, RowCipher, RowUnreadable, open_image, seal
from wapool.crypto.usage import check_startup, usage
from wapool.db.pool import Database
from wapool.errors import ConfigError
from wapool.store import pg_copy
from wapool.store.mirror import Mirror
from wapool.store.provision import provision
from wapool.store.verify import verify, wait_drained
from wapool.whatsapp.neonize_store import create_schema

pytestmark = pytest.mark.timeout(180)


def _key_file(path: Path, *keys: keyring.MasterKey) -> keyring.Keyring:
    keyring.write(path, list(keys) or [keyring.new_key()])
    ring = keyring.load(path)
    assert ring is not None
    return ring


def _secrets(store: Path) -> set[bytes]:
    found = secrets_of(store)
    assert len(found) >= 4, "the store holds no device keys or sessions to look for"
    return found


def _message_texts(secret: str) -> set[bytes]:
    """What ``tests.test_sealed_messages.inbound``/``outbound`` wrote with ``secret``: texts,
    captions, media bytes and file names."""
    return {
        *(f"{secret} caption {n}".encode() for n in range(3)),
        f"{secret}.jpg".encode(), f"{secret} from sql".encode(), f"{secret} png".encode(),
        f"{secret}.png".encode(), f"{secret} from the api".encode(), f"{secret} jpeg".encode(),
    }  # fmt: skip


async def _store(db: Database, url: str, template: Path, state: Path, company: str) -> Path:
    add_companies(url, company)
    path = new_store(template, state, company)
    writer = writer_for(path, hash(company) % 1000)
    for _ in range(40):
        writer.random_transaction()
    for _ in range(5):
        writer.session()
    writer.conn.close()
    await mirror_once(db, company, path)
    return path


async def test_dump_holds_no_private_key_and_a_new_host_restores_the_same_device(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    ring = _key_file(tmp_path / "master.key")
    db.cipher = RowCipher(ring)
    path = await _store(db, database_url, whatsmeow_template, tmp_path / "a", "sealed")
    secrets = _secrets(path)
    assert (await verify(db, path, "sealed")).equal
    # Messages both ways: inbound events, an API message and a producer's row (claimed).
    assert await inbound(db, tmp_path / "a", "sealed", "quokka") == 3
    (await outbound(db, database_url, tmp_path / "a", "sealed", "quokka")).close()
    texts = _message_texts("quokka")

    dump = pg_dump(database_url, tmp_path / "all.sql")
    assert leaks(dump, secrets) == []
    assert leaks(dump, texts) == []

    # The check can fail: the same store and messages written without a key leak everything.
    plain_db = Database.from_settings(make_settings(database_url, tmp_path / "p"))
    await plain_db.open(wait=True)
    try:
        plain = await _store(plain_db, database_url, whatsmeow_template, tmp_path / "p", "plain")
        await inbound(plain_db, tmp_path / "p", "plain", "wombat")
        (await outbound(plain_db, database_url, tmp_path / "p", "plain", "wombat")).close()
    finally:
        await plain_db.close()
    dump = pg_dump(database_url, tmp_path / "all2.sql")
    assert set(leaks(dump, _secrets(plain)))
    assert set(leaks(dump, _message_texts("wombat"))) == {
        t.hex()[:12] for t in _message_texts("wombat")
    }

    async with new_host(database_url, tmp_path, tmp_path / "master.key") as (settings, other):
        result = await provision(other, settings.state_dir, "sealed")
        restored = settings.state_dir / path.relative_to(tmp_path / "a")
        assert result.action == "restored-postgres"
        assert dump_store(restored) == dump_store(path)
        devices = create_schema([path, restored])
        assert devices[path], "neonize finds no device in the original store"
        assert devices[restored] == devices[path]
        assert (await verify(other, restored, "sealed")).equal


async def test_moved_ciphertext_fails_loudly_and_other_companies_still_restore(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    db.cipher = RowCipher(_key_file(tmp_path / "master.key"))
    paths = {
        company: await _store(db, database_url, whatsmeow_template, tmp_path / company, company)
        for company in ("one", "two")
    }
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT tbl, pk, image FROM store_rows WHERE company_id = 'one' "
            "AND tbl = 'whatsmeow_sessions' LIMIT 1"
        ).fetchone()
        assert row is not None
        assert row[2].startswith("e1:")
        table, key, image = row
        # another key of the same table, another table, another company
        conn.execute(
            "UPDATE store_rows SET image = %s WHERE company_id = 'one' AND tbl = %s "
            "AND pk = (SELECT max(pk) FROM store_rows WHERE company_id = 'one' AND tbl = %s "
            "AND pk <> %s)",
            (image, table, table, key),
        )
    with pytest.raises(RowUnreadable, match=r"company 'one'.*whatsmeow_sessions \(1 rows\)"):
        await pg_copy.fetch_rows(db, "one")
    with pytest.raises(RowUnreadable, match="company 'one'"):
        await verify(db, paths["one"], "one")

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE store_rows SET image = %s WHERE company_id = 'two' AND tbl = %s "
            "AND pk = (SELECT min(pk) FROM store_rows WHERE company_id = 'two' AND tbl = %s)",
            (image, table, table),
        )
        conn.execute(
            "UPDATE store_rows SET image = %s WHERE company_id = 'two' "
            "AND tbl = 'whatsmeow_device'",
            (image,),
        )
    with pytest.raises(RowUnreadable) as caught:
        await pg_copy.fetch_rows(db, "two")
    assert "whatsmeow_device (1 rows)" in str(caught.value)
    assert "whatsmeow_sessions (1 rows)" in str(caught.value)

    # A third company is not affected by the other two's broken rows.
    await _store(db, database_url, whatsmeow_template, tmp_path / "three", "three")
    result = await provision(db, tmp_path / "fresh", "three")
    assert result.action == "restored-postgres"


async def test_rotation_rewraps_without_rewriting_rows_and_old_key_retires(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    old = _key_file(tmp_path / "master.key")
    db.cipher = RowCipher(old)
    path = await _store(db, database_url, whatsmeow_template, tmp_path / "s", "rot")
    before = await db.fetch("SELECT tbl, pk, image FROM store_rows ORDER BY 1, 2")

    new = keyring.new_key()
    ring = _key_file(tmp_path / "master.key", new, *old.keys)
    assert await rotation.rewrap(db, ring) == 1
    assert await rotation.rewrap(db, ring) == 0  # resumable: nothing left
    assert await db.fetch("SELECT tbl, pk, image FROM store_rows ORDER BY 1, 2") == before
    assert (await usage(db)).wrapped_by == {new.key_id: 1}

    only_new = RowCipher(_key_file(tmp_path / "new-only.key", new))
    db.cipher = only_new
    assert (await verify(db, path, "rot")).equal
    # The old key alone no longer opens anything: the data key is wrapped by the new one.
    db.cipher = RowCipher(_key_file(tmp_path / "old-only.key", *old.keys))
    with pytest.raises(ConfigError, match=f"lacks master key {new.key_id}"):
        await pg_copy.fetch_rows(db, "rot")


async def test_plaintext_copy_is_encrypted_online_resumably(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = await _store(db, database_url, whatsmeow_template, tmp_path / "s", "legacy")
    writer = writer_for(path, 99)  # pairs again: a logout's tombstones come along
    writer.logout()
    writer.pair()
    writer.conn.close()
    await mirror_once(db, "legacy", path)
    found = await usage(db)
    assert found.sealed_rows == 0
    assert found.plaintext_rows > 0

    db.cipher = RowCipher(_key_file(tmp_path / "master.key"))
    first = await rotation.reencrypt(db, "legacy", batch=7, pause=0)
    assert first.rewritten >= found.plaintext_rows
    assert (await rotation.reencrypt(db, "legacy", batch=7, pause=0)).rewritten == 0
    found = await usage(db)
    assert found.plaintext_rows == 0
    assert found.sealed_rows > 0
    tombstones = await db.fetch("SELECT image FROM store_tombstones")
    assert tombstones
    assert all(str(t[0]).startswith("e1:") for t in tombstones)
    assert (await verify(db, path, "legacy")).equal


def test_key_file_must_be_private_and_a_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    ring = _key_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match=r"WAPOOL_MASTER_KEY_FILE .* mode 0640") as caught:
        keyring.load(path)
    assert path.read_text().strip() not in str(caught.value)
    os.chmod(path, 0o600)
    assert keyring.load(path) == ring
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match="line 1 is not a base64 key"):
        keyring.load(path)
    assert keyring.load(None) is None


def test_systemd_credential_takes_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    ring = _key_file(credentials / keyring.CREDENTIAL)
    _key_file(tmp_path / "file.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    loaded = keyring.load(tmp_path / "file.key")
    assert loaded is not None
    assert loaded.keys == ring.keys
    assert loaded.source == "systemd credential wapool-master-key"


async def test_run_exits_78_naming_the_credential(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    db.cipher = RowCipher(_key_file(tmp_path / "master.key"))
    await _store(db, database_url, whatsmeow_template, tmp_path / "s", "keyed")
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "run"),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
    }
    missing = run_cli("run", env=env, cwd=tmp_path)
    assert missing.returncode == 78, missing.stderr
    assert "wapool-master-key / WAPOOL_MASTER_KEY_FILE" in missing.stderr

    _key_file(tmp_path / "wrong.key")
    wrong = run_cli("run", env={**env, "WAPOOL_MASTER_KEY_FILE": str(tmp_path / "wrong.key")},
                    cwd=tmp_path)  # fmt: skip
    assert wrong.returncode == 78, wrong.stderr
    assert "WAPOOL_MASTER_KEY_FILE" in wrong.stderr
    assert "lacks master key" in wrong.stderr

    doctor = run_cli("doctor", env={**env, "WAPOOL_MASTER_KEY_FILE": str(tmp_path / "wrong.key")},
                     cwd=tmp_path)  # fmt: skip
    assert "FAIL  master key" in doctor.stdout

    status = run_cli("keys", "status", env={**env, "WAPOOL_MASTER_KEY_FILE": str(
        tmp_path / "master.key")}, cwd=tmp_path)  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert "current; wraps 1 companies' data keys" in status.stdout


async def test_export_is_encrypted_by_default_and_a_tampered_file_is_refused(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    db.cipher = RowCipher(_key_file(tmp_path / "master.key"))
    path = await _store(db, database_url, whatsmeow_template, tmp_path / "s", "exp")
    secrets = _secrets(path)
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "s"),
        "WAPOOL_MASTER_KEY_FILE": str(tmp_path / "master.key"),
    }
    (tmp_path / "pass").write_text("correct horse battery\n")
    backup = tmp_path / "exp.wapool"
    no_tty = run_cli("export", "exp", str(backup), env=env, cwd=tmp_path)
    assert no_tty.returncode == 1
    assert "--passphrase-file" in no_tty.stderr
    assert not backup.exists()
    done = run_cli("export", "exp", str(backup), "--passphrase-file", str(tmp_path / "pass"),
                   env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "(encrypted)" in done.stdout
    data = backup.read_bytes()
    assert data.startswith(b"wapool-sealed-export 1\n")
    assert leaks(data, secrets) == []
    assert oct(backup.stat().st_mode & 0o777) == "0o600"

    tampered = tmp_path / "tampered.wapool"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(flipped))
    before = await db.fetch("SELECT tbl, pk, image FROM store_rows ORDER BY 1, 2")
    for bad, passfile in ((tampered, "pass"), (backup, "wrong")):
        (tmp_path / "wrong").write_text("not the passphrase\n")
        refused = run_cli("import", "exp", str(bad), "--force", "--passphrase-file",
                          str(tmp_path / passfile), env=env, cwd=tmp_path)  # fmt: skip
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "fails authentication" in refused.stderr
    assert await db.fetch("SELECT tbl, pk, image FROM store_rows ORDER BY 1, 2") == before

    imported = run_cli("import", "exp", str(backup), "--force", "--passphrase-file",
                       str(tmp_path / "pass"), env=env, cwd=tmp_path)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert (await verify(db, path, "exp")).equal
    sealed = await db.fetch("SELECT count(*) FROM store_rows WHERE image NOT LIKE 'e1:%'")
    assert sealed == [(0,)]  # imported rows are sealed too

    plain = run_cli("export", "exp", str(tmp_path / "plain.db"), "--plaintext", env=env,
                    cwd=tmp_path)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert set(leaks((tmp_path / "plain.db").read_bytes(), secrets))


async def test_a_company_whose_data_key_is_unusable_waits_and_the_others_go_on(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    ring = _key_file(tmp_path / "master.key")
    db.cipher = RowCipher(ring)
    paths = {
        company: await _store(db, database_url, whatsmeow_template, tmp_path / company, company)
        for company in ("stuck", "fine")
    }
    # Another host rotated "stuck"'s data key to a master key this process does not have.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE store_data_keys SET master_key_id = 'elsewhere' "
                     "WHERE company_id = 'stuck'")  # fmt: skip
    db.cipher = RowCipher(ring)  # a process started since: nothing cached
    for path in paths.values():
        writer = writer_for(path, 7)
        for _ in range(20):
            writer.random_transaction()
        writer.conn.close()
    mirror = Mirror(db)
    for company, path in paths.items():
        mirror.add(company, path)
    try:
        await mirror.tick()
        await mirror.tick()
    finally:
        mirror.close()
    assert await wait_drained(paths["fine"], 0) == 0
    assert (await verify(db, paths["fine"], "fine")).equal
    assert await wait_drained(paths["stuck"], 0) > 0  # kept locally, not written in plaintext
    plain = await db.fetch("SELECT count(*) FROM store_rows WHERE image NOT LIKE 'e1:%'")
    assert plain == [(0,)]
    with pytest.raises(ConfigError, match="lacks master key elsewhere"):
        await pg_copy.fetch_rows(db, "stuck")


async def test_keys_init_rotate_retire_from_the_command_line(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "master.key"
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "s"),
        "WAPOOL_MASTER_KEY_FILE": str(key_file),
    }
    init = run_cli("keys", "init", env=env, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert "systemd-creds encrypt --name=wapool-master-key" in init.stdout
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    again = run_cli("keys", "init", env=env, cwd=tmp_path)
    assert again.returncode == 1
    assert "refusing to replace" in again.stderr
    old = keyring.load(key_file)
    assert old is not None
    db.cipher = RowCipher(old)
    path = await _store(db, database_url, whatsmeow_template, tmp_path / "s", "cli")
    before = await db.fetch("SELECT tbl, pk, image FROM store_rows ORDER BY 1, 2")

    rotated = run_cli("keys", "rotate", env=env, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "1 data keys re-wrapped" in rotated.stdout
    new = keyring.load(key_file)
    assert new is not None
    assert new.keys[1:] == old.keys
    assert await db.fetch("SELECT tbl, pk, image FROM store_rows ORDER BY 1, 2") == before
    status = run_cli("keys", "status", env=env, cwd=tmp_path)
    assert f"{old.current.key_id}  old, unused: can be retired" in status.stdout
    refused = run_cli("keys", "retire", new.current.key_id, env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert "is the current master key" in refused.stderr
    retired = run_cli("keys", "retire", old.current.key_id, env=env, cwd=tmp_path)
    assert retired.returncode == 0, retired.stderr
    only_new = keyring.load(key_file)
    assert only_new is not None
    assert only_new.keys == new.keys[:1]
    db.cipher = RowCipher(only_new)
    assert (await verify(db, path, "cli")).equal


async def test_a_company_added_again_gets_a_new_data_key_not_the_cached_one(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    db.cipher = RowCipher(_key_file(tmp_path / "master.key"))
    path = await _store(db, database_url, whatsmeow_template, tmp_path / "s", "again")
    [(old_key,)] = await db.fetch("SELECT key_id FROM store_data_keys")
    mirror = Mirror(db)
    mirror.add("again", path)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:  # cascades to its rows
            conn.execute("DELETE FROM companies WHERE id = 'again'")
            conn.execute("INSERT INTO companies (id) VALUES ('again')")
        writer = writer_for(path, 3)
        for _ in range(10):
            writer.random_transaction()
        writer.conn.close()
        await mirror.tick()  # the cached key is gone: rejected, forgotten
        await mirror.tick()  # a new key, and the rows under it
    finally:
        mirror.close()
    [(new_key,)] = await db.fetch("SELECT key_id FROM store_data_keys")
    assert new_key != old_key
    rows = await pg_copy.fetch_rows(db, "again")  # every row opens
    assert rows


def test_associated_data_binds_company_table_key_seq_and_key_id() -> None:
    dk = DataKey("k1", os.urandom(32))
    sealed = seal(dk, "c", "whatsmeow_sessions", '["t1"]', 7, '["xAB"]')
    assert open_image({"k1": dk}, "c", "whatsmeow_sessions", '["t1"]', 7, sealed) == '["xAB"]'
    for company, table, key, seq in (
        ("d", "whatsmeow_sessions", '["t1"]', 7),
        ("c", "whatsmeow_identity_keys", '["t1"]', 7),
        ("c", "whatsmeow_sessions", '["t2"]', 7),
        ("c", "whatsmeow_sessions", '["t1"]', 8),
    ):
        with pytest.raises(ValueError, match="does not decrypt"):
            open_image({"k1": dk}, company, table, key, seq, sealed)
    renamed = sealed.replace("e1:k1:", "e1:k2:")
    with pytest.raises(ValueError, match="does not decrypt"):
        open_image({"k1": dk, "k2": dk}, "c", "whatsmeow_sessions", '["t1"]', 7, renamed)
    assert open_image({}, "c", "t", "k", 0, '["tplain"]') == '["tplain"]'  # plaintext passes


def test_the_daemon_seals_what_it_mirrors_and_says_when_it_cannot(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    add_companies(database_url, "962302")
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path / "plain")}
    daemon = daemons.start(env)
    lines = daemon.wait_for("event=daemon_ready")
    off = next(line for line in lines if "event=encryption_off" in line)
    assert "level=warning" in off
    assert daemon.stop(timeout=15) == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM store_copies")  # start over, encrypted, on another host

    _key_file(tmp_path / "master.key")
    env = {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(tmp_path / "sealed"),
        "WAPOOL_MASTER_KEY_FILE": str(tmp_path / "master.key"),
    }
    daemon = daemons.start(env)
    lines = daemon.wait_for("event=daemon_ready")
    assert any("event=encryption_on" in line for line in lines)
    deadline = time.monotonic() + 30
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            count = conn.execute("SELECT count(*) FROM store_rows").fetchone()
            if count and count[0] > 0:
                break
            assert time.monotonic() < deadline, "the daemon mirrored nothing"
            time.sleep(0.1)
    assert daemon.stop(timeout=15) == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        images = [r[0] for r in conn.execute("SELECT image FROM store_rows").fetchall()]
    assert images
    assert all(i.startswith("e1:") for i in images)


async def test_reencryption_while_the_mirror_writes_keeps_verify_equal(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = await _store(db, database_url, whatsmeow_template, tmp_path / "s", "busy")
    db.cipher = RowCipher(_key_file(tmp_path / "master.key"))
    mirror = Mirror(db)
    mirror.add("busy", path)
    stop = asyncio.Event()
    running = asyncio.create_task(mirror.run(stop))

    def write() -> None:
        writer = writer_for(path, 21)
        try:
            for _ in range(150):
                writer.random_transaction()
        finally:
            writer.conn.close()

    try:
        writing = asyncio.create_task(asyncio.to_thread(write))
        progress = await rotation.reencrypt(db, "busy", batch=5, pause=0)
        await writing
        assert await mirror.drain(30)
    finally:
        stop.set()
        await running
        mirror.close()
    assert progress.rewritten > 0
    assert (await verify(db, path, "busy")).equal
    plain = await db.fetch("SELECT count(*) FROM store_rows WHERE image NOT LIKE 'e1:%'")
    assert plain == [(0,)]


async def test_the_startup_check_during_an_outage_checks_what_it_can(tmp_path: Path) -> None:
    settings = make_settings(
        "postgresql://wapool@127.0.0.1:1/wapool", tmp_path / "s", db_connect_timeout_seconds=1
    )
    down = Database.from_settings(settings)
    await down.open(wait=False)
    try:
        await check_startup(down, settings)  # no key, nothing required: a warning
        required = make_settings(
            "postgresql://wapool@127.0.0.1:1/wapool", tmp_path / "s", encryption_required=True
        )
        with pytest.raises(ConfigError, match="no master key configured"):
            await check_startup(down, required)
        down.cipher = RowCipher(_key_file(tmp_path / "master.key"))
        await check_startup(down, required)  # a key: the rest is checked per company
    finally:
        await down.close()
