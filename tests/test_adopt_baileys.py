"""``wapool adopt --from-baileys``: an auth state Baileys itself made (npm), dumped by
``tools/baileys-dump.mjs`` from its useMultiFileAuthState folder and from PostgreSQL rows, is
adopted as the same device; a wrong-length key and a signature that does not verify are each
refused in one line and change nothing."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.adopt import toolchains
from tests.adopt.checks import (
    assert_restores_elsewhere,
    assert_same_device,
    assert_verify_equal,
    changed_nothing,
    fingerprint,
)
from tests.adopt.sources import BaileysState, baileys_state
from tests.conftest import mirror_once, run_cli
from wapool.db.pool import Database
from wapool.settings import Settings
from wapool.store.adopt import curve
from wapool.store.adopt.baileys_source import take_baileys
from wapool.store.working_store import connect, store_path
from wapool.testing.whatsmeow_writes import WhatsmeowWriter

pytestmark = pytest.mark.timeout(900)  # a cold cache installs Baileys once
TOOL = Path(__file__).parent.parent / "tools" / "baileys-dump.mjs"


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> BaileysState:
    return baileys_state(tmp_path_factory.mktemp("baileys"), "5531955554444")


def _env(database_url: str, settings: Settings) -> dict[str, str]:
    return {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(settings.state_dir)}


def _dump(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(TOOL), *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def test_xeddsa_verifies_signatures_libsignal_made(device: BaileysState, tmp_path: Path) -> None:
    """Several auth states: half of libsignal's signatures carry the sign bit, half do not."""
    states = [device] + [baileys_state(tmp_path, f"55119000000{i}") for i in range(5)]
    for state in states:
        creds = state.state["creds"]
        identity = base64.b64decode(creds["signedIdentityKey"]["public"]["data"])
        spk = creds["signedPreKey"]
        public = base64.b64decode(spk["keyPair"]["public"]["data"])
        signature = base64.b64decode(spk["signature"]["data"])
        assert curve.public_key(base64.b64decode(spk["keyPair"]["private"]["data"])) == public
        assert curve.signed_pre_key_verifies(identity, public, signature)
        for bit in (0, 100, 511):
            bad = bytearray(signature)
            bad[bit // 8] ^= 1 << (bit % 8)
            assert not curve.signed_pre_key_verifies(identity, public, bytes(bad))
        assert not curve.signed_pre_key_verifies(public, public, signature)


async def test_baileys_state_is_adopted_as_the_same_device(
    device: BaileysState, db: Database, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    dumped = _dump("--folder", str(device.folder))
    assert dumped.returncode == 0, dumped.stderr
    assert f"creds of {device.jid}" in dumped.stderr
    state_file = tmp_path / "acme.json"
    state_file.write_text(dumped.stdout)
    assert take_baileys(state_file).tables == device.taken.tables  # the same as Baileys printed
    untouched = fingerprint(state_file, device.folder)
    env = _env(database_url, settings)
    assert run_cli("company", "add", "acme", "--disabled", env=env, cwd=tmp_path).returncode == 0
    done = run_cli("adopt", "acme", "--from-baileys", str(state_file), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"adopted device {device.jid} from baileys {state_file}" in done.stdout
    assert "left out: 1 session record(s)" in done.stdout
    assert fingerprint(state_file, device.folder) == untouched
    path = store_path(settings.state_dir, "acme")
    assert_same_device(path, device, tmp_path / "loaded")
    assert_verify_equal("acme", env, tmp_path)
    # The adopted device goes on changing keys as whatsmeow would; the mirror carries them.
    writer = WhatsmeowWriter(connect(path), random.Random(16))
    writer.jid = device.jid
    for _ in range(120):
        writer.random_transaction()
    writer.conn.close()
    await mirror_once(db, "acme", path)
    assert_verify_equal("acme", env, tmp_path)
    await assert_restores_elsewhere(db, "acme", settings.state_dir, tmp_path / "host2", device)


def test_dump_reads_baileys_rows_from_postgres(
    device: BaileysState, database_url: str, tmp_path: Path
) -> None:
    """A bot's auth state kept in PostgreSQL as rows named like the folder's files."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bot_auth (session_id text, key text, value jsonb)")
        for file in sorted(device.folder.iterdir()):
            for session in ("acme", "other"):
                conn.execute(
                    "INSERT INTO bot_auth VALUES (%s, %s, %s::jsonb)",
                    (session, file.stem, file.read_text()),
                )
    modules = toolchains.node_modules()
    args = ["--postgres", database_url, "--table", "bot_auth", "--key-column", "key",
            "--value-column", "value", "--session-column", "session_id", "--session", "acme"]  # fmt: skip
    dumped = _dump(*args, cwd=modules.parent)
    assert dumped.returncode == 0, dumped.stderr
    from_folder = _dump("--folder", str(device.folder))
    assert json.loads(dumped.stdout) == json.loads(from_folder.stdout)


def _hostile(device: BaileysState, tmp_path: Path, change: Any) -> Path:
    state = json.loads(device.json_path.read_text())
    change(state["creds"])
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(state))
    return path


def _short_key(creds: dict[str, Any]) -> None:
    key = base64.b64decode(creds["noiseKey"]["private"]["data"])
    creds["noiseKey"]["private"]["data"] = base64.b64encode(key[:31]).decode()


def _bad_signature(creds: dict[str, Any]) -> None:
    sig = bytearray(base64.b64decode(creds["signedPreKey"]["signature"]["data"]))
    sig[10] ^= 0x01
    creds["signedPreKey"]["signature"]["data"] = base64.b64encode(bytes(sig)).decode()


def _other_public(creds: dict[str, Any]) -> None:
    creds["signedIdentityKey"]["public"] = creds["noiseKey"]["public"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_short_key, "noiseKey.private is 31 bytes, expected 32"),
        (_bad_signature, "the signed pre-key's signature does not verify against the identity key"),
        (_other_public, "identity_key: the private key does not produce the recorded public key"),
    ],
    ids=["wrong-length-key", "bad-signature", "wrong-public-key"],
)
def test_hostile_auth_state_gets_one_line(
    change: Any,
    expected: str,
    device: BaileysState,
    database_url: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    path = _hostile(device, tmp_path, change)
    untouched = fingerprint(path)
    env = _env(database_url, settings)
    assert run_cli("company", "add", "acme", "--disabled", env=env, cwd=tmp_path).returncode == 0
    result = run_cli("adopt", "acme", "--from-baileys", str(path), env=env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"wapool: error: baileys {path}: "), lines
    assert lines[0].endswith(expected), lines
    assert fingerprint(path) == untouched
    changed_nothing(database_url, "acme", settings.state_dir)
    assert not os.listdir(settings.state_dir) if settings.state_dir.exists() else True
