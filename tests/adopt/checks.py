"""What every adoption must prove, whatever the source."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

import psycopg

from tests.adopt.sources import BaileysState
from tests.conftest import dump_store, run_cli
from wapool.db.pool import Database
from wapool.store.adopt.curve import public_key
from wapool.store.devices import same_device
from wapool.store.provision import provision
from wapool.store.working_store import store_path
from wapool.whatsapp.neonize_store import create_schema


def fingerprint(*paths: Path) -> dict[str, str]:
    """Content digests of each file (and its companions: -wal, -shm, ...) or folder given."""
    found: dict[str, str] = {}
    for path in paths:
        if path.is_dir():
            items = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            items = sorted(p for p in path.parent.glob(path.name + "*") if p.is_file())
        for item in items:
            found[str(item)] = hashlib.sha256(item.read_bytes()).hexdigest()
    return found


def assert_same_device(store: Path, state: BaileysState, scratch: Path) -> None:
    """neonize loads ``store`` as the device of ``state``; its public identity and noise keys,
    derived from the stored private keys, are the source's."""
    scratch.mkdir(exist_ok=True)
    copy = scratch / f"loaded-{len(list(scratch.iterdir()))}.db"
    with closing(sqlite3.connect(store)) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    loaded = create_schema([copy])[copy]
    assert len(loaded) == 1, loaded
    assert same_device(loaded[0], state.jid), loaded
    with closing(sqlite3.connect(copy)) as conn:
        noise, identity = conn.execute(
            "SELECT noise_key, identity_key FROM whatsmeow_device WHERE jid = ?", (state.jid,)
        ).fetchone()
    assert public_key(noise) == state.public("noiseKey")
    assert public_key(identity) == state.public("signedIdentityKey")


def assert_verify_equal(company: str, env: dict[str, str], cwd: Path) -> None:
    result = run_cli("verify", company, env=env, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{company}: EQUAL"), result.stdout


async def assert_restores_elsewhere(
    db: Database, company: str, state_dir: Path, other_host: Path, state: BaileysState
) -> None:
    """Another host, with no working store, restores the same device from PostgreSQL."""
    done = await provision(db, other_host, company)
    assert done.action == "restored-postgres", done
    assert dump_store(done.path) == dump_store(store_path(state_dir, company))
    assert_same_device(done.path, state, other_host.parent / "loaded-elsewhere")


def changed_nothing(database_url: str, company: str, state_dir: Path) -> None:
    """No PostgreSQL copy, no import record, not paired, no working store."""
    with psycopg.connect(database_url) as conn:
        copies = conn.execute(
            "SELECT count(*) FROM store_copies WHERE company_id = %s", (company,)
        ).fetchone()
        rows = conn.execute(
            "SELECT count(*) FROM store_rows WHERE company_id = %s", (company,)
        ).fetchone()
        imports = conn.execute(
            "SELECT count(*) FROM store_imports WHERE company_id = %s", (company,)
        ).fetchone()
        paired = conn.execute(
            "SELECT paired_jid FROM companies WHERE id = %s", (company,)
        ).fetchone()
    assert (copies, rows, imports, paired) == ((0,), (0,), (0,), (None,))
    assert not store_path(state_dir, company).exists()
    leftovers = list(state_dir.glob("*/store.db.adopting-*")) if state_dir.exists() else []
    assert leftovers == []
