"""One WhatsApp device, one company: who holds a device, however its JID is written.

Two companies on one device would replace each other's connection forever (WhatsApp keeps one
connection per device), so ``wapool import`` refuses a device another company holds, in its
PostgreSQL copy (a ``whatsmeow_device`` row) or as its paired JID. Removed companies do not
count: removing the old company is how a device is moved on purpose.
"""

from __future__ import annotations

from wapool.db.pool import Conn
from wapool.store.codec import decode_row

DEVICE_TABLE = "whatsmeow_device"


def jids(rows: list[tuple[str, str, str]]) -> list[str]:
    """The device JIDs (``whatsmeow_device`` keys) among a store's rows."""
    return [str(decode_row(key)[0]) for table, key, _ in rows if table == DEVICE_TABLE]


def same_device(a: str, b: str) -> bool:
    """One WhatsApp device, however the JID is written (``user[.agent][:device]@server``)."""
    return _device_identity(a) == _device_identity(b)


def _device_identity(jid: str) -> tuple[str, str, str]:
    user, _, server = jid.partition("@")
    user, _, device = user.partition(":")
    return user.split(".", 1)[0], device or "0", server


async def holders(conn: Conn, company_id: str, wanted: list[str]) -> list[str]:
    """'company (device JID)' for every other live company holding one of ``wanted``."""
    cur = await conn.execute(
        "SELECT r.company_id, r.pk FROM store_rows r JOIN companies c ON c.id = r.company_id "
        "WHERE r.tbl = %s AND r.company_id <> %s AND c.removed_at IS NULL",
        (DEVICE_TABLE, company_id),
    )
    held = [(str(c), str(decode_row(pk)[0])) for c, pk in await cur.fetchall()]
    cur = await conn.execute(
        "SELECT id, paired_jid FROM companies WHERE paired_jid IS NOT NULL AND id <> %s "
        "AND removed_at IS NULL",
        (company_id,),
    )
    held += [(str(c), str(j)) for c, j in await cur.fetchall()]
    return sorted({f"{c} ({j})" for c, j in held for mine in wanted if same_device(j, mine)})
