"""A running daemon follows master key rotation without a restart.

``wapool keys rotate`` writes the new key in front of the old ones (the file is replaced
atomically) and re-wraps every data key in PostgreSQL. A daemon that kept the keyring it
started with would go on wrapping the data keys of new companies with the old key, and could
not unwrap data keys another host wrapped with the new one. So every
``WAPOOL_MASTER_KEY_CHECK_SECONDS`` the daemon

* reloads its keyring when the key file changed (another inode, size or modification time),
  or when PostgreSQL holds data keys wrapped by a master key it lacks (a rotation on another
  host: its own copy of the file may have been updated meanwhile);
* logs ``master_key_missing`` once per such key when its keyring still lacks it (update this
  host's file; a systemd credential is read at start only: restart).

Cached data keys stay valid (a rotation re-wraps them, their secrets do not change). A key
file that has become unreadable or invalid is reported and the keyring in use is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from wapool.crypto import keyring
from wapool.db.pool import Database
from wapool.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)


class KeyWatch:
    def __init__(self, db: Database, master_key_file: Path | None) -> None:
        self._db = db
        self._file = master_key_file
        self._seen = self._signature()
        self._reported: set[str] = set()
        self._failed: tuple[int, int, int] | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        found = keyring.source_path(self._file)
        if found is None:
            return None
        try:
            info = os.stat(found[0])
        except OSError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if not stop.is_set():
                try:
                    await self.check()
                except Exception as exc:  # never the daemon's end: logged, tried again
                    log.error("master_key_check_failed", extra={"error": str(exc)})

    async def check(self) -> bool:
        """Reload the keyring if it changed or PostgreSQL needs a key it lacks; True when a
        new keyring is in use."""
        if self._db.cipher.keyring is None:
            return False  # encryption off: a key configured later needs a restart
        signature = self._signature()
        missing = await self._missing()
        reloaded = False
        if signature != self._seen or missing:
            reloaded = self._reload(signature)
            missing = [m for m in missing if self._db.cipher.keyring.get(m) is None]
        for master_key_id in missing:
            if master_key_id not in self._reported:
                self._reported.add(master_key_id)
                log.warning(
                    "master_key_missing",
                    extra={"master_key": master_key_id, "source": self._db.cipher.keyring.source,
                           "hint": "add it to this host's key file (a systemd credential: "
                                   "restart); see docs/encryption.md"},
                )  # fmt: skip
        return reloaded

    async def _missing(self) -> list[str]:
        ring = self._db.cipher.keyring
        assert ring is not None
        try:
            rows = await self._db.fetch("SELECT DISTINCT master_key_id FROM store_data_keys")
        except DatabaseUnavailable:
            return []
        return sorted(str(r[0]) for r in rows if ring.get(str(r[0])) is None)

    def _reload(self, signature: tuple[int, int, int] | None) -> bool:
        old = self._db.cipher.keyring
        assert old is not None
        try:
            ring = keyring.load(self._file)
        except ConfigError as exc:
            if signature != self._failed:  # once per version of the file
                self._failed = signature
                log.error("master_key_reload_failed", extra={"error": str(exc)})
            return False
        self._seen = signature
        if ring is None or ring.keys == old.keys:
            return False
        self._db.cipher.keyring = ring
        log.info(
            "master_key_reloaded",
            extra={"current": ring.current.key_id, "keys": len(ring.keys), "source": ring.source},
        )
        return True
