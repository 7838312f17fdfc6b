"""Change capture on the real whatsmeow schema (created by neonize): every kind of write that
whatsmeow makes reaches the change log, and replaying the log reproduces the store."""

from __future__ import annotations

import random
import sqlite3
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import new_store
from wapool.store import changelog
from wapool.store.capture import install_capture, installed_triggers
from wapool.store.dump import Rows, dump_rows
from wapool.store.working_store import connect
from wapool.testing.whatsmeow_writes import WhatsmeowWriter

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def conn(whatsmeow_template: Path, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = connect(new_store(whatsmeow_template, tmp_path, "962302"))
    changelog.trim(connection, changelog.last_seq(connection))  # start from an empty log
    yield connection
    connection.close()


def _replay(conn: sqlite3.Connection, base: Rows) -> tuple[Rows, changelog.Prefix | None]:
    """Apply the pending log to a copy of ``base`` as the mirror would; trim it."""
    prefix = changelog.read_prefix(conn)
    rows = dict(base)
    if prefix is not None:
        for change in prefix.changes:
            if change.image is None:
                rows.pop((change.table, change.key), None)
            else:
                rows[(change.table, change.key)] = change.image
        changelog.trim(conn, prefix.high_seq)
    return rows, prefix


def _tables(prefix: changelog.Prefix | None) -> set[str]:
    return {c.table for c in prefix.changes} if prefix else set()


def test_every_whatsmeow_table_has_triggers(conn: sqlite3.Connection) -> None:
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'whatsmeow_%'"
        )
    ]
    assert len(tables) == 17
    triggers = set(installed_triggers(conn))
    for table in tables:
        assert {f"wapool_capture_{table}_{s}" for s in ("ai", "au", "ad")} <= triggers
    assert "wapool_capture_whatsmeow_lid_map_bi0" in triggers  # pn is UNIQUE besides the key


def test_inserts_upserts_updates_deletes(conn: sqlite3.Connection) -> None:
    writer = WhatsmeowWriter(conn, random.Random(1))
    writer.pair()
    rows, prefix = _replay(conn, dump_rows(conn) | {})
    assert _tables(prefix) == {"whatsmeow_device"}
    assert rows == dump_rows(conn)

    writer.session("alice@s.whatsapp.net")
    writer.session("alice@s.whatsapp.net")  # ON CONFLICT DO UPDATE
    writer.pre_keys(5)  # insert + update in one transaction
    writer.consume_pre_key()  # delete
    writer.message_secret()
    rows, prefix = _replay(conn, rows)
    assert prefix is not None
    assert prefix.entries == 2 + 10 + 1 + 1  # one entry per row written, before coalescing
    assert _tables(prefix) == {
        "whatsmeow_sessions", "whatsmeow_pre_keys", "whatsmeow_message_secrets"
    }  # fmt: skip
    assert rows == dump_rows(conn)


def test_insert_or_replace_on_a_unique_column_is_captured(conn: sqlite3.Connection) -> None:
    writer = WhatsmeowWriter(conn, random.Random(2))
    writer.lid_mapping_replace("111@lid", "5511@s.whatsapp.net")
    rows, _ = _replay(conn, dump_rows(conn) | {})
    # Same phone number under a new LID: REPLACE silently deletes the old row (no DELETE trigger
    # fires without recursive_triggers); the BEFORE trigger's recheck catches it.
    writer.lid_mapping_replace("222@lid", "5511@s.whatsapp.net")
    rows, _ = _replay(conn, rows)
    assert rows == dump_rows(conn)
    assert [k for t, k in rows if t == "whatsmeow_lid_map"] == ['["t222@lid"]']
    writer.lid_mapping_replace("222@lid", "5599@s.whatsapp.net")  # REPLACE on the key itself
    rows, _ = _replay(conn, rows)
    assert rows == dump_rows(conn)
    writer.lid_mapping("333@lid", "5599@s.whatsapp.net")  # whatsmeow's own way: delete + upsert
    rows, _ = _replay(conn, rows)
    assert rows == dump_rows(conn)
    assert [k for t, k in rows if t == "whatsmeow_lid_map"] == ['["t333@lid"]']


def test_key_change_cascades_and_logout_cascade_deletes(conn: sqlite3.Connection) -> None:
    writer = WhatsmeowWriter(conn, random.Random(3))
    writer.pair()
    for _ in range(20):
        writer.random_transaction()
    rows, _ = _replay(conn, dump_rows(conn) | {})
    assert rows == dump_rows(conn)
    # ON UPDATE CASCADE: the device's JID changes and every child key follows.
    conn.execute(
        "UPDATE whatsmeow_device SET jid = 'new.0:1@s.whatsapp.net' WHERE jid = ?", (writer.jid,)
    )
    writer.jid = "new.0:1@s.whatsapp.net"
    rows, _ = _replay(conn, rows)
    assert rows == dump_rows(conn)
    # Logout: whatsmeow deletes the device; ON DELETE CASCADE removes its keys.
    writer.logout()
    rows, prefix = _replay(conn, rows)
    assert prefix is not None
    assert {"whatsmeow_device", "whatsmeow_sessions"} <= _tables(prefix)
    assert rows == dump_rows(conn)
    assert not [k for k in rows if k[0] not in ("whatsmeow_version", "whatsmeow_lid_map")]


def test_rolled_back_transactions_leave_no_trace(conn: sqlite3.Connection) -> None:
    writer = WhatsmeowWriter(conn, random.Random(4))
    writer.pair()
    rows, _ = _replay(conn, dump_rows(conn) | {})
    conn.execute("BEGIN")
    conn.execute("DELETE FROM whatsmeow_device")
    conn.execute("ROLLBACK")
    assert changelog.read_prefix(conn) is None
    assert dump_rows(conn) == rows


def test_sequence_is_strictly_increasing_across_trims(conn: sqlite3.Connection) -> None:
    writer = WhatsmeowWriter(conn, random.Random(5))
    writer.pair()
    seen: list[int] = []
    for _ in range(3):
        writer.session()
        prefix = changelog.read_prefix(conn)
        assert prefix is not None
        seen.append(prefix.high_seq)
        changelog.trim(conn, prefix.high_seq)
    assert seen == sorted(set(seen))


def test_schema_change_regenerates_triggers_and_rechecks_everything(
    conn: sqlite3.Connection,
) -> None:
    writer = WhatsmeowWriter(conn, random.Random(6))
    writer.pair()
    writer.contact()
    rows, _ = _replay(conn, dump_rows(conn) | {})
    assert install_capture(conn) is False  # nothing changed
    # What a whatsmeow upgrade might do: a new column, filled in by the upgrade itself.
    conn.execute("ALTER TABLE whatsmeow_contacts ADD COLUMN nickname TEXT")
    conn.execute("UPDATE whatsmeow_contacts SET nickname = 'ana'")
    assert install_capture(conn) is True
    rows, _ = _replay(conn, rows)
    assert rows == dump_rows(conn)
    assert any(
        '"tana"' in image for (table, _), image in rows.items() if table == "whatsmeow_contacts"
    )
    writer.contact()
    rows, _ = _replay(conn, rows)
    assert rows == dump_rows(conn)


def test_a_long_backlog_is_read_in_memory_that_follows_the_keys(conn: sqlite3.Connection) -> None:
    """After a long outage a store's log holds many entries over few keys: reading it holds one
    entry per key, not every entry (a backlog of millions would not fit in memory)."""
    writer = WhatsmeowWriter(conn, random.Random(6))
    writer.pair()
    changelog.trim(conn, changelog.last_seq(conn))
    contacts = [f"{n}@s.whatsapp.net" for n in range(10)]
    with conn:
        for n in range(20_000):
            conn.execute(
                "INSERT INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?, ?, ?) "
                "ON CONFLICT (our_jid, their_id) DO UPDATE SET session = excluded.session",
                (writer.jid, contacts[n % 10], random.randbytes(2_000)),
            )
    tracemalloc.start()
    try:
        prefix = changelog.read_prefix(conn)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert prefix is not None
    assert prefix.entries == 20_000
    assert len(prefix.changes) == 10
    # 20,000 entries of ~4 KB of hex are ~80 MB; ten keys' worth (and a block being read) is
    # well under 5 MB.
    assert peak < 5_000_000, peak
