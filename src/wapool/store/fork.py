"""A restore starts a new line of the copy: a new store identity, before the store is built.

Only the daemon holding the lease restores (under the fence), and from then on the copy takes
changes from the restored store alone: a store of the old identity — a host that kept driving
the company through a partition, or that died with unmirrored changes and comes back — is
refused by the mirror (``pg_copy``), and its next provisioning sees another identity and
restores over it, keeping what it owed aside (``rescue`` saves entries of the same identity
only). Sequence numbers alone could not tell: both lines continue from the same
``applied_seq``.
"""

from __future__ import annotations

import dataclasses
import uuid

from wapool.db.pool import Conn, Database
from wapool.leases import Fence
from wapool.store.pg_copy import CopyMeta
from wapool.store.rescue import RescueRefused


async def fork(db: Database, meta: CopyMeta, fence: Fence | None) -> CopyMeta:
    """Give the copy ``meta`` a new identity (only if it still has ``meta``'s); the new meta."""
    new = str(uuid.uuid4())

    async def work(conn: Conn) -> None:
        if fence is not None:
            refused = await fence.refused(conn, [meta.company_id])
            if refused:
                raise RescueRefused(f"restore of {meta.company_id} refused: "
                                    f"{refused[meta.company_id]}")  # fmt: skip
        cur = await conn.execute(
            "UPDATE store_copies SET store_uuid = %s, updated_at = now() "
            "WHERE company_id = %s AND store_uuid = %s AND applied_seq = %s",
            (new, meta.company_id, meta.store_uuid, meta.applied_seq),
        )
        if cur.rowcount != 1:
            raise RescueRefused(f"the PostgreSQL copy of {meta.company_id} changed during its "
                                "restore; retried")  # fmt: skip

    await db.run(work)
    return dataclasses.replace(meta, store_uuid=new)
