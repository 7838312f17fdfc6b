"""Issue 13: a restored store never reuses key material.

On the real whatsmeow schema (created by neonize): a host pairs, mirrors pre-key batches (some
consumed and deleted since), then writes a fresh batch it never mirrors and dies. The company is
restored on another host: the next pre-key id whatsmeow would issue (its own query,
``SELECT MAX(key_id) FROM whatsmeow_pre_keys WHERE jid=$1`` plus one, read in whatsmeow's
``store/sqlstore/store.go``) is above both the high-water mark and the lost batch, the
placeholder is never offered for upload (``uploaded = true``), neonize still loads the device,
our own group sender keys are gone (others' stay), the copy is equal to the restored store
once mirrored, and the dead host's store can never write over the new line of the copy.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import mirror_once, new_store
from tests.test_mirror import add_companies
from wapool.db.pool import Database
from wapool.store.mirror import Mirror
from wapool.store.provision import provision
from wapool.store.verify import verify
from wapool.store.working_store import connect
from wapool.testing.whatsmeow_writes import WhatsmeowWriter
from wapool.whatsapp.neonize_store import create_schema

pytestmark = pytest.mark.timeout(180)
COMPANY = "pk1"
GAP = 100


def _next_prekey_id(conn: sqlite3.Connection, jid: str) -> int:
    """What whatsmeow's getNextPreKeyID returns."""
    row = conn.execute("SELECT MAX(key_id) FROM whatsmeow_pre_keys WHERE jid=?", (jid,)).fetchone()
    return int(row[0] or 0) + 1


def _own_sender(jid: str) -> str:
    user, device = jid.split("@")[0].split(":")
    return f"{user.split('.')[0]}:{device}"


async def test_a_restored_store_issues_only_prekey_ids_above_the_high_water_mark(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    add_companies(database_url, COMPANY)
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    path_a = new_store(whatsmeow_template, host_a, COMPANY)
    conn = connect(path_a)
    writer = WhatsmeowWriter(conn, random.Random(13))
    jid = writer.pair()
    writer.pre_keys(50)  # 1..50
    writer.pre_keys(50)  # 51..100
    for _ in range(60):  # 1..60 consumed (the server hands them out in order) and deleted
        writer.consume_pre_key()
    conn.execute(
        "INSERT INTO whatsmeow_sender_keys (our_jid, chat_id, sender_id, sender_key) "
        "VALUES (?, 'g1@g.us', ?, x'01'), (?, 'g1@g.us', '5511000000001:0', x'02')",
        (jid, _own_sender(jid), jid),
    )
    conn.close()
    await mirror_once(db, COMPANY, path_a)

    with connect(path_a) as conn:  # a fresh batch, uploaded, never mirrored: then host A dies
        late = WhatsmeowWriter(conn, random.Random(14))
        late.jid = jid
        late.pre_keys(50)  # 101..150
        lost_batch = [r[0] for r in conn.execute(
            "SELECT key_id FROM whatsmeow_pre_keys WHERE key_id > 100")]  # fmt: skip
    assert lost_batch == list(range(101, 151))
    stale_a = tmp_path / "a-dead"
    shutil.copytree(host_a, stale_a)

    result = await provision(db, host_b, COMPANY, prekey_gap=GAP)
    path_b = result.path
    assert result.action == "restored-postgres"
    with connect(path_b) as conn:
        next_id = _next_prekey_id(conn, jid)
        unuploaded = conn.execute(
            "SELECT key_id FROM whatsmeow_pre_keys WHERE jid=? AND uploaded=false", (jid,)
        ).fetchall()
        senders = [r[0] for r in conn.execute("SELECT sender_id FROM whatsmeow_sender_keys")]
    assert next_id == 100 + GAP + 1
    assert next_id > max(lost_batch)
    assert unuploaded == []  # the placeholder is never offered to the server
    assert senders == ["5511000000001:0"]  # our own sender key gone, the contact's kept
    assert len(create_schema([path_b])[path_b]) == 1  # neonize loads the device, placeholder in

    await mirror_once(db, COMPANY, path_b)
    assert (await verify(db, path_b, COMPANY)).equal

    # The dead host's store is of the old line: the mirror refuses it, whatever it holds.
    mirror = Mirror(db)
    mirror.add(COMPANY, stale_a / COMPANY / "store.db")
    try:
        await mirror.tick()
        assert "belongs to store" in (mirror.stats.companies[COMPANY].rejected or "")
    finally:
        mirror.close()
    assert (await verify(db, path_b, COMPANY)).equal

    # A second restore continues beyond the first one's placeholder (now in the copy).
    path_b.unlink()
    again = await provision(db, tmp_path / "c", COMPANY, prekey_gap=GAP)
    with connect(again.path) as conn:
        assert _next_prekey_id(conn, jid) == 100 + 2 * GAP + 1
