"""Row images sealed with a company's data key (AES-256-GCM), data keys wrapped by a master key.

A sealed image is text: ``e1:<data key id>:<base64(nonce || ciphertext || tag)>``. A plaintext
image is the codec's JSON array (it starts with ``[``), so a database being encrypted holds both
and every reader accepts both (``open_image``). The associated data binds the company, table,
row key and sequence (and the data key id): a ciphertext copied to another row, table or
company, or replayed with another ``seq``, fails to decrypt and is reported, never skipped.

Data keys live in ``store_data_keys``, each wrapped by one master key (``keyring``). They are
created in a transaction of their own before they are used, so no row is ever sealed with a key
that a rolled-back transaction took away.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wapool.crypto.keyring import Keyring
from wapool.errors import ConfigError, WapoolError

if TYPE_CHECKING:
    from wapool.db.pool import Conn, Database

PREFIX = "e1:"
NONCE_BYTES = 12


class RowUnreadable(WapoolError):
    """Rows of a company's PostgreSQL copy failed to decrypt (moved, altered, or wrong key)."""


class DataKey:
    __slots__ = ("aead", "key_id")

    def __init__(self, key_id: str, secret: bytes) -> None:
        self.key_id = key_id
        self.aead = AESGCM(secret)


def _wrap_ad(company_id: str, key_id: str) -> bytes:
    return f"wapool data key\0{company_id}\0{key_id}".encode()


def associated_data(company_id: str, table: str, key: str, seq: int, key_id: str) -> bytes:
    return f"{company_id}\0{table}\0{key}\0{seq}\0{key_id}".encode()


def is_sealed(image: str) -> bool:
    return image.startswith(PREFIX)


def seal(dk: DataKey, company_id: str, table: str, key: str, seq: int, image: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = dk.aead.encrypt(
        nonce, image.encode(), associated_data(company_id, table, key, seq, dk.key_id)
    )
    return f"{PREFIX}{dk.key_id}:{base64.b64encode(nonce + sealed).decode()}"


def open_image(
    keys: dict[str, DataKey], company_id: str, table: str, key: str, seq: int, image: str
) -> str:
    """The plaintext image; ValueError (saying why, without secrets) when it cannot be read."""
    if not image.startswith(PREFIX):
        return image
    key_id, _, body = image[len(PREFIX) :].partition(":")
    dk = keys.get(key_id)
    if dk is None:
        raise ValueError(f"sealed with data key {key_id!r}, which this company does not have")
    try:
        raw = base64.b64decode(body, validate=True)
        plain = dk.aead.decrypt(
            raw[:NONCE_BYTES],
            raw[NONCE_BYTES:],
            associated_data(company_id, table, key, seq, key_id),
        )
    except (InvalidTag, binascii.Error, ValueError):
        raise ValueError("does not decrypt for this company, table, key and seq") from None
    return plain.decode()


class RowCipher:
    """Seals the rows the mirror writes and opens the rows restore, verify and export read.

    Without a keyring it writes plaintext and refuses (``RowUnreadable``) to read sealed rows.
    """

    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring
        self._current: dict[str, DataKey] = {}
        self._all: dict[str, dict[str, DataKey]] = {}

    @property
    def enabled(self) -> bool:
        return self.keyring is not None

    async def prepare(
        self, db: Database, companies: Iterable[str]
    ) -> tuple[dict[str, DataKey], dict[str, str]]:
        """The current data key of each company, created (and committed) when it has none; and
        the companies whose key is unusable (say, wrapped by a master key this process lacks
        after another host rotated), with why: only those wait, the others go on."""
        if self.keyring is None:
            return {}, {}
        missing = [c for c in companies if c not in self._current]
        failed: dict[str, str] = {}
        if missing:

            async def work(conn: Conn) -> None:
                try:
                    await self._load(conn, missing, create=True)
                except WapoolError:  # find which ones, one by one
                    for company_id in missing:
                        try:
                            await self._load(conn, [company_id], create=False)
                        except WapoolError as exc:
                            failed[company_id] = str(exc)

            await db.run(work)
        for company_id in companies:
            if company_id not in self._current and company_id not in failed:
                failed[company_id] = f"company {company_id!r} has no data key (unknown company)"
        return self._current, failed

    async def keys_of(self, conn: Conn, company_id: str) -> dict[str, DataKey]:
        """Every data key of the company, for reading (nothing is created)."""
        if company_id not in self._all:
            await self._load(conn, [company_id], create=False)
        return self._all.get(company_id, {})

    async def _load(self, conn: Conn, companies: list[str], *, create: bool) -> None:
        cur = await conn.execute(
            "SELECT company_id, key_id, master_key_id, wrapped FROM store_data_keys "
            "WHERE company_id = ANY(%s) ORDER BY created_at",
            (companies,),
        )
        rows = await cur.fetchall()
        if create:
            have = {r[0] for r in rows}
            for company_id in companies:
                if company_id not in have:
                    await self._create(conn, company_id)
            cur = await conn.execute(
                "SELECT company_id, key_id, master_key_id, wrapped FROM store_data_keys "
                "WHERE company_id = ANY(%s) ORDER BY created_at",
                (companies,),
            )
            rows = await cur.fetchall()
        for company_id, key_id, master_key_id, wrapped in rows:
            dk = DataKey(key_id, self._unwrap(company_id, key_id, master_key_id, bytes(wrapped)))
            self._all.setdefault(company_id, {})[key_id] = dk
            self._current[company_id] = dk  # ordered by created_at: the newest wins

    async def _create(self, conn: Conn, company_id: str) -> None:
        assert self.keyring is not None
        master = self.keyring.current
        key_id = os.urandom(6).hex()
        secret = AESGCM.generate_key(bit_length=256)
        wrapped = wrap(master.secret, company_id, key_id, secret)
        await conn.execute(
            "INSERT INTO store_data_keys (company_id, key_id, master_key_id, wrapped) "
            "SELECT %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM companies WHERE id = %s)",
            (company_id, key_id, master.key_id, wrapped, company_id),
        )

    def _unwrap(self, company_id: str, key_id: str, master_key_id: str, wrapped: bytes) -> bytes:
        if self.keyring is None:
            raise RowUnreadable(
                f"company {company_id!r}: its rows are encrypted and no master key is "
                "configured (systemd credential wapool-master-key or WAPOOL_MASTER_KEY_FILE)"
            )
        master = self.keyring.get(master_key_id)
        if master is None:
            raise ConfigError(
                [
                    f"{self.keyring.source}: lacks master key {master_key_id}, which wraps "
                    f"company {company_id!r}'s data key"
                ]
            )
        return unwrap(master.secret, company_id, key_id, wrapped)

    async def open_rows(
        self, conn: Conn, company_id: str, rows: list[tuple[str, str, int, str]]
    ) -> list[tuple[str, str, str]]:
        """(table, key, plaintext image) of (table, key, seq, image) rows; RowUnreadable naming
        the company and each table with rows that do not decrypt."""
        if not any(is_sealed(r[3]) for r in rows):
            return [(table, key, image) for table, key, _, image in rows]
        keys = await self.keys_of(conn, company_id)
        # Some 3-5 us a row: a 100,000-row restore would hold the event loop for 0.4 s.
        return await asyncio.to_thread(_open_all, keys, company_id, rows)

    def forget(self, company_id: str | None = None) -> None:
        """Drop cached data keys (after a rotation, or a company's removal)."""
        if company_id is None:
            self._current.clear()
            self._all.clear()
        else:
            self._current.pop(company_id, None)
            self._all.pop(company_id, None)


def _open_all(
    keys: dict[str, DataKey], company_id: str, rows: list[tuple[str, str, int, str]]
) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    failed: Counter[str] = Counter()
    reason = ""
    for table, key, seq, image in rows:
        try:
            out.append((table, key, open_image(keys, company_id, table, key, seq, image)))
        except ValueError as exc:
            failed[table] += 1
            reason = reason or str(exc)
    if failed:
        tables = ", ".join(f"{t} ({n} rows)" for t, n in sorted(failed.items()))
        raise RowUnreadable(f"company {company_id!r}: rows fail to decrypt in {tables}: {reason}")
    return out


def wrap(master_secret: bytes, company_id: str, key_id: str, secret: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(master_secret).encrypt(nonce, secret, _wrap_ad(company_id, key_id))


def unwrap(master_secret: bytes, company_id: str, key_id: str, wrapped: bytes) -> bytes:
    try:
        return AESGCM(master_secret).decrypt(
            wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_ad(company_id, key_id)
        )
    except InvalidTag:
        raise RowUnreadable(
            f"company {company_id!r}: data key {key_id} does not unwrap (altered or moved)"
        ) from None
