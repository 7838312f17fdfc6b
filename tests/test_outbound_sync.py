"""The outbox and ``outbound_messages`` on a real PostgreSQL: a takeover makes the previous
holder's unfinished rows ``uncertain``; rows this node claimed but never copied are copied
(sendable), and recent idempotency keys come along; producers' rows are claimed only under a
live lease; the mirror writes statuses back only for rows this node claimed; a clean release
hands queued rows back."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from wapool.db.pool import Database
from wapool.leases import Leases
from wapool.messaging.outbound import Outbound, Status
from wapool.messaging.outbound_pg import OutboundSync
from wapool.messaging.outbox import Outbox

pytestmark = pytest.mark.timeout(60)
JID = "491701234567@s.whatsapp.net"


def _rows(url: str) -> dict[str, tuple[str, str | None, str | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, status, claimed_by, reason FROM outbound_messages"
        ).fetchall()
    return {str(k): (str(s), c, r) for k, s, c, r in rows}


async def test_takeover_claim_mirror_release(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('acme')")
        for key, status, claimer in [
            ("a-queued", "queued", "node-a"), ("a-sending", "sending", "node-a"),
            ("a-sent", "sent", "node-a"), ("b-claimed", "queued", "node-b"),
            ("free", "queued", None),
        ]:  # fmt: skip
            conn.execute(
                "INSERT INTO outbound_messages (company_id, to_jid, text, idempotency_key, "
                "status, claimed_by) VALUES ('acme', %s, 'hi', %s, %s, %s)",
                (JID, key, status, claimer),
            )
    leases = Leases(db, "node-b", seconds=30)
    box = Outbox(tmp_path / "outbox.db")
    woken: list[str] = []
    sync = OutboundSync(db, box, leases, woken.append)

    await sync.claim()  # no lease yet: nothing is claimed
    assert _rows(database_url)["free"][1] is None
    assert await leases.acquire(["acme"]) == {"acme": 1}
    await sync.step()  # adopt, then claim

    rows = _rows(database_url)
    assert rows["a-queued"][0] == "uncertain"
    assert "taken over from node-a" in (rows["a-queued"][2] or "")
    assert rows["a-sending"][0] == "uncertain"
    assert rows["a-sent"][0] == "sent"  # finished rows are left alone
    assert rows["free"][1] == "node-b"
    queued = {r.idempotency_key for r in box.queued("acme")}
    assert queued == {"b-claimed", "free"}  # claimed by us and never copied: sendable
    assert box.by_key("acme", "a-queued").status is Status.UNCERTAIN  # type: ignore[union-attr]
    again, new = await box.accept(Outbound("acme", JID, "other", idempotency_key="a-sent"))
    assert not new  # a key used on another node returns that message
    assert again.status is Status.SENT
    assert woken  # the sender was told

    free = box.by_key("acme", "free")
    assert free is not None
    await box.transition(free.id, Status.SENT, allowed_from=[Status.QUEUED], whatsapp_id="WA1")
    api, _ = await box.accept(Outbound("acme", JID, "from the API", idempotency_key="api-1"))
    await sync.mirror()
    rows = _rows(database_url)
    assert rows["free"][0] == "sent"
    assert rows["api-1"] == ("queued", "node-b", None)

    with psycopg.connect(database_url, autocommit=True) as conn:  # another node took it over
        conn.execute("UPDATE outbound_messages SET claimed_by = 'node-c', status = 'uncertain' "
                     "WHERE idempotency_key = 'free'")  # fmt: skip
    await box.receipt("acme", "WA1", Status.READ)
    await sync.mirror()
    assert _rows(database_url)["free"][:2] == ("uncertain", "node-c")  # not overwritten

    await sync.release(["acme"])
    rows = _rows(database_url)
    assert rows["api-1"][:2] == ("queued", None)  # handed back for the next holder
    assert rows["b-claimed"][:2] == ("queued", None)
    assert box.get("acme", api.id) is None
    box.close()
