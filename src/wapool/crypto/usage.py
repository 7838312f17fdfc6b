"""What uses which master key, and whether this process may run with the key it has."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from wapool.crypto.keyring import CREDENTIAL, Keyring
from wapool.db.pool import Conn, Database
from wapool.errors import ConfigError, DatabaseUnavailable
from wapool.settings import Settings

log = logging.getLogger(__name__)

NOT_CONFIGURED = f"systemd credential {CREDENTIAL} / WAPOOL_MASTER_KEY_FILE"


@dataclass(frozen=True)
class Usage:
    #: master key id -> companies whose data keys it wraps
    wrapped_by: dict[str, int]
    sealed_rows: int
    plaintext_rows: int
    #: inbound and outbound messages whose content is sealed / in the clear
    sealed_messages: int = 0
    plaintext_messages: int = 0


async def usage(db: Database, *, count_rows: bool = True) -> Usage:
    async def work(conn: Conn) -> Usage:
        cur = await conn.execute(
            "SELECT master_key_id, count(DISTINCT company_id) FROM store_data_keys GROUP BY 1"
        )
        wrapped = {str(m): int(n) for m, n in await cur.fetchall()}
        if not count_rows:
            return Usage(wrapped, 0, 0)
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE image LIKE 'e1:%%'), "
            "count(*) FILTER (WHERE image NOT LIKE 'e1:%%') FROM store_rows"
        )
        sealed, plain = await cur.fetchone() or (0, 0)
        cur = await conn.execute(
            "SELECT count(sealed), count(*) - count(sealed) FROM (SELECT sealed FROM "
            "inbound_messages UNION ALL SELECT sealed FROM outbound_messages) m"
        )
        sealed_messages, plain_messages = await cur.fetchone() or (0, 0)
        return Usage(wrapped, int(sealed), int(plain), int(sealed_messages), int(plain_messages))

    return await db.run(work)


def judge(keyring: Keyring | None, found: Usage, settings: Settings) -> str:
    """One line on the encryption state; ConfigError (exit 78) naming the credential when
    this process cannot read what the database holds, or must encrypt and cannot."""
    if keyring is None:
        if found.wrapped_by:
            raise ConfigError(
                [
                    f"{NOT_CONFIGURED}: no master key configured, and the rows of "
                    f"{sum(found.wrapped_by.values())} companies are encrypted with one"
                ]
            )
        if settings.encryption_required:
            raise ConfigError(
                [f"{NOT_CONFIGURED}: no master key configured (WAPOOL_ENCRYPTION_REQUIRED=true)"]
            )
        return "off: no master key configured, rows and messages are written in plaintext"
    missing = {m: n for m, n in found.wrapped_by.items() if keyring.get(m) is None}
    if missing:
        lines = [
            f"{keyring.source}: lacks master key {m}, which wraps {n} companies' data keys "
            "(wrong key, or an old key retired too early)"
            for m, n in sorted(missing.items())
        ]
        raise ConfigError(lines)
    return f"on: master key {keyring.current.key_id} from {keyring.source}"


async def check_startup(db: Database, settings: Settings) -> None:
    """Before the daemon starts any client: refuse to run (ConfigError) with a missing or
    wrong master key; warn once when encryption is off. During an outage only what can be
    told without the database is checked: a daemon may start while PostgreSQL is away, and a
    wrong key then shows per company (its data key does not unwrap), never as a crash."""
    try:
        found = await usage(db, count_rows=False)
    except DatabaseUnavailable as exc:
        log.warning("encryption_check_deferred", extra={"reason": str(exc)})
        found = Usage({}, 0, 0)
    state = judge(db.cipher.keyring, found, settings)
    if db.cipher.keyring is None:
        log.warning("encryption_off", extra={"detail": state, "see": "docs/encryption.md"})
    else:
        log.info("encryption_on", extra={"detail": state})
