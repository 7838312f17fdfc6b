"""What the encryption-at-rest tests share: the private key bytes a store holds, a full pg_dump
searched for them, and a second host holding its own copy of the same master key."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

from tests.conftest import make_settings
from wapool.db.pool import Database
from wapool.settings import Settings

#: The columns of a whatsmeow store that hold private key material (device keys, sessions).
SECRET_COLUMNS = (
    "SELECT noise_key, identity_key, signed_pre_key FROM whatsmeow_device "
    "UNION ALL SELECT session, NULL, NULL FROM whatsmeow_sessions"
)


def secrets_of(store: Path) -> set[bytes]:
    """Every private key and session blob in the store."""
    with closing(sqlite3.connect(store)) as conn:
        return {v for row in conn.execute(SECRET_COLUMNS) for v in row if v}


def pg_dump(database_url: str, target: Path) -> bytes:
    """A full plain-text dump of the database."""
    binary = shutil.which("pg_dump") or next(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))
    subprocess.run([str(binary), "-f", str(target), database_url], check=True, timeout=60)
    return target.read_bytes()


def leaks(dump: bytes, secrets: set[bytes]) -> list[str]:
    """The secrets (first hex digits) found in the dump, raw or hex in either case."""
    leaked = []
    for secret in secrets:
        for form in (secret, secret.hex().encode(), secret.hex().upper().encode()):
            if form in dump:
                leaked.append(secret.hex()[:12])
    return leaked


@asynccontextmanager
async def new_host(
    database_url: str, tmp_path: Path, master_key: Path
) -> AsyncIterator[tuple[Settings, Database]]:
    """Another host: a fresh state directory and its own (0600) copy of the master key."""
    shutil.copy(master_key, tmp_path / "other.key")
    os.chmod(tmp_path / "other.key", 0o600)
    settings = make_settings(
        database_url, tmp_path / "new-host", master_key_file=tmp_path / "other.key"
    )
    other = Database.from_settings(settings)
    await other.open(wait=True)
    try:
        yield settings, other
    finally:
        await other.close()
