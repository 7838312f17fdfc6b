"""Pairing requests: how ``wapool pair`` and the daemon driving a company talk.

The command writes a request; the daemon publishes each QR or pair code into it as whatsmeow
produces them, then the paired JID. The command shows the codes and reports success only once
the new device's credentials are in the PostgreSQL copy (a restart right after pairing must
never lose them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import LiteralString

from psycopg.rows import class_row

from wapool.db.pool import Conn, Database
from wapool.errors import CompanyNotFound, WapoolError
from wapool.registry.company import validate_company_id

_PHONE = re.compile(r"^[0-9]{8,15}$")
_COLUMNS: LiteralString = (
    "company_id, requested_at, phone, code_kind, code, code_at, phone_sent, paired_jid, error, "
    "finished_at"
)


class AlreadyPaired(WapoolError):
    pass


@dataclass(frozen=True)
class PairingRequest:
    company_id: str
    requested_at: datetime
    phone: str | None
    code_kind: str | None
    code: str | None
    code_at: datetime | None
    phone_sent: bool
    paired_jid: str | None
    error: str | None
    finished_at: datetime | None


@dataclass(frozen=True)
class SessionReport:
    """What the daemon driving a company last recorded about its session (``session_states``)."""

    state: str
    since: datetime
    last_error: str | None
    holder: str
    updated_at: datetime


def validate_phone(phone: str) -> str:
    digits = re.sub(r"[\s+()-]", "", phone)
    if not _PHONE.match(digits):
        raise WapoolError(
            f"invalid phone number {phone!r}: give the international number, digits only "
            "(e.g. 5511999999999)"
        )
    return digits


class PairingRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def request(self, company_id: str, phone: str | None) -> None:
        validate_company_id(company_id)

        async def work(conn: Conn) -> None:
            cur = await conn.execute(
                "SELECT paired_jid, enabled FROM companies WHERE id = %s AND removed_at IS NULL",
                (company_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise CompanyNotFound(f"unknown company {company_id!r}")
            if row[0]:
                raise AlreadyPaired(
                    f"company {company_id!r} is already paired as {row[0]}; its session is kept "
                    "(nothing to do)"
                )
            if not row[1]:  # no daemon starts its client, so no code would ever come
                raise WapoolError(
                    f"company {company_id!r} is disabled: `wapool company enable {company_id}` "
                    "first"
                )
            await conn.execute(
                "INSERT INTO pairing_requests (company_id, phone) VALUES (%s, %s) "
                "ON CONFLICT (company_id) DO UPDATE SET requested_at = now(), "
                "phone = EXCLUDED.phone, code_kind = NULL, code = NULL, code_at = NULL, "
                "phone_sent = false, paired_jid = NULL, error = NULL, finished_at = NULL",
                (company_id, phone),
            )

        await self._db.run(work)

    async def get(self, company_id: str) -> PairingRequest | None:
        async def work(conn: Conn) -> PairingRequest | None:
            cur = conn.cursor(row_factory=class_row(PairingRequest))
            await cur.execute(
                f"SELECT {_COLUMNS} FROM pairing_requests WHERE company_id = %s", (company_id,)
            )
            return await cur.fetchone()

        return await self._db.run(work)

    async def session(self, company_id: str) -> SessionReport | None:
        """The company's session as its daemon last recorded it, from any host."""

        async def work(conn: Conn) -> SessionReport | None:
            cur = conn.cursor(row_factory=class_row(SessionReport))
            await cur.execute(
                "SELECT state, since, last_error, holder, updated_at FROM session_states "
                "WHERE company_id = %s",
                (company_id,),
            )
            return await cur.fetchone()

        return await self._db.run(work)

    async def open_requests(self) -> list[PairingRequest]:
        async def work(conn: Conn) -> list[PairingRequest]:
            cur = conn.cursor(row_factory=class_row(PairingRequest))
            await cur.execute(f"SELECT {_COLUMNS} FROM pairing_requests WHERE finished_at IS NULL")
            return await cur.fetchall()

        return await self._db.run(work)

    async def publish_code(self, company_id: str, kind: str, code: str) -> None:
        await self._db.execute(
            "UPDATE pairing_requests SET code_kind = %s, code = %s, code_at = now() "
            "WHERE company_id = %s AND finished_at IS NULL",
            (kind, code, company_id),
        )

    async def mark_phone_sent(self, company_id: str) -> None:
        await self._db.execute(
            "UPDATE pairing_requests SET phone_sent = true WHERE company_id = %s", (company_id,)
        )

    async def finish(
        self, company_id: str, *, jid: str | None = None, error: str | None = None
    ) -> None:
        await self._db.execute(
            "UPDATE pairing_requests SET paired_jid = %s, error = %s, finished_at = now() "
            "WHERE company_id = %s AND finished_at IS NULL",
            (jid, error, company_id),
        )

    async def device_mirrored(self, company_id: str, jid: str) -> bool:
        """Are the new device's credentials in the PostgreSQL copy yet?"""
        user = jid.split("@", 1)[0].split(":", 1)[0].split(".", 1)[0]
        rows = await self._db.fetch(
            "SELECT 1 FROM store_rows WHERE company_id = %s AND tbl = 'whatsmeow_device' "
            "AND pk LIKE %s",
            (company_id, f'["t{user}%'),
        )
        return bool(rows)
