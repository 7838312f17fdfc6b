"""Cleanup purges: one change-log entry per batch, repeated in PostgreSQL as one range delete,
and still exactly the rows the working store lost, whatever whatsmeow and the mirror do between
the page read and the delete."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.conftest import mirror_once, new_store
from tests.test_mirror import add_companies, writer_for
from wapool.cleanup import postgres
from wapool.cleanup.executor import CleanupRun
from wapool.cleanup.policy import RetentionPolicy
from wapool.cleanup.pruner import OutdatedCapture, Pruner, StalePage
from wapool.db.pool import Database
from wapool.store import changelog, purge
from wapool.store.capture import CAPTURE_VERSION, install_capture
from wapool.store.codec import decode_row
from wapool.store.dump import dump_rows
from wapool.store.mirror import Mirror
from wapool.store.purge import PURGE_TABLE
from wapool.store.schema import read_schema
from wapool.store.verify import verify
from wapool.store.working_store import connect, json_array_sql, set_meta

pytestmark = pytest.mark.timeout(120)

SENDER_KEYS = "whatsmeow_sender_keys"
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
CUTOFF = NOW - timedelta(days=30)


def _age(url: str, company: str, table: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE store_rows SET written_at = %s WHERE company_id = %s AND tbl = %s",
            (OLD, company, table),
        )


def _keys(conn: sqlite3.Connection, table: str) -> set[str]:
    spec = read_schema(conn).table(table)
    query = f"SELECT {json_array_sql('t', spec.key_columns)} FROM {table} AS t"
    return {str(r[0]) for r in conn.execute(query)}


def _entries(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [(str(t), str(o)) for t, o in conn.execute("SELECT tbl, op FROM wapool_changelog")]


async def _paired_store(
    db: Database, url: str, template: Path, state: Path, company: str, seed: int
) -> tuple[Path, sqlite3.Connection]:
    add_companies(url, company)
    path = new_store(template, state, company)
    writer = writer_for(path, seed)
    for _ in range(150):
        writer.sender_key()
    await mirror_once(db, company, path)
    _age(url, company, SENDER_KEYS)
    return path, writer.conn


def _sender_key(conn: sqlite3.Connection, pk: str, value: bytes) -> None:
    our, chat, sender = decode_row(pk)
    conn.execute(
        "INSERT INTO whatsmeow_sender_keys VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE "
        "SET sender_key = excluded.sender_key",
        (our, chat, sender, value),
    )


@pytest.mark.parametrize("seed", range(8))
async def test_purges_among_writes_deletes_and_mirror_ticks_converge(
    seed: int, db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    """Even seeds delete as the cleanup does (rechecking in PostgreSQL under the lock when the
    mirror trimmed unseen entries); odd seeds read the page again instead (``StalePage``)."""
    recheck = seed % 2 == 0
    run = CleanupRun(db, RetentionPolicy.build(30), tmp_path)
    company = f"mix{seed}"
    path, conn = await _paired_store(db, database_url, whatsmeow_template, tmp_path, company, seed)
    rng = random.Random(seed)
    fresh: set[str] = set()  # keys written (or rewritten) during the cleanup: they must stay
    purged: list[str] = []
    mirror = Mirror(db)
    mirror.add(company, path)
    pruner = Pruner(path, batch_rows=7)
    pruner.open()
    cursor, stale = "", 0
    try:
        while True:
            page = await postgres.expired_page(db, company, SENDER_KEYS, CUTOFF, cursor, 25)
            if not page.keys:
                break
            try:
                for start in range(0, len(page.keys), 7):
                    chunk = page.keys[start : start + 7]
                    roll = rng.random()
                    if roll < 0.25:  # whatsmeow rewrites a key the page still calls expired
                        pk = rng.choice(chunk)[0]
                        _sender_key(conn, pk, rng.randbytes(16))
                        fresh.add(pk)
                    elif roll < 0.35:  # ... or deletes one
                        pk = rng.choice(chunk)[0]
                        conn.execute(
                            "DELETE FROM whatsmeow_sender_keys WHERE our_jid = ? AND chat_id = ? "
                            "AND sender_id = ?",
                            decode_row(pk),
                        )
                        fresh.discard(pk)
                    elif roll < 0.45 and purged:  # ... or writes a purged key again
                        pk = rng.choice(purged)
                        _sender_key(conn, pk, rng.randbytes(16))
                        fresh.add(pk)
                    if rng.random() < 0.5:
                        await mirror.tick()
                    if recheck:
                        part = postgres.Page(page.applied_seq, chunk)
                        batch = await run._delete(
                            pruner, company, SENDER_KEYS, part, cursor, CUTOFF
                        )
                    else:
                        batch = pruner.delete(
                            SENDER_KEYS,
                            chunk,
                            after=cursor,
                            cutoff=CUTOFF,
                            read_seq=page.applied_seq,
                        )
                    purged.extend(pk for pk, _ in chunk if pk not in fresh)
                    assert batch.rows + batch.skipped <= len(chunk)
                    cursor = chunk[-1][0]
            except StalePage:
                stale += 1
        local = _keys(conn, SENDER_KEYS)
    finally:
        pruner.close()
        conn.close()
    # Both ways of learning what the mirror applied meanwhile were really taken.
    assert (pruner.rechecks if recheck else stale) > 0
    assert local == fresh, "exactly the keys written during the cleanup survive locally"
    assert await mirror.drain(30)
    mirror.close()
    verdict = await verify(db, path, company)
    assert verdict.equal, verdict
    assert len(purged) > 100  # the run really purged (and PostgreSQL followed)


async def test_a_late_mirrored_old_write_in_the_purged_range_is_spared(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    """A write committed locally long ago (its ``written_at`` is past the cutoff) but mirrored
    after the page was read: the purge's range covers its key, only ``seq`` spares it."""
    path, conn = await _paired_store(db, database_url, whatsmeow_template, tmp_path, "late", 1)
    page = await postgres.expired_page(db, "late", SENDER_KEYS, CUTOFF, "", 1000)
    through = page.keys[-1][0]
    our_jid = decode_row(through)[0]
    with psycopg.connect(database_url) as pg:
        for n in range(100):
            late = json.dumps(
                [f"t{our_jid}", f"t{n}@g.us", "t1@s.whatsapp.net"], separators=(",", ":")
            )
            inside = pg.execute("SELECT %s::text <= %s::text", (late, through)).fetchone()
            if inside and inside[0]:
                break
        else:
            pytest.fail("no key below the page's last key")
    _sender_key(conn, late, b"late")
    conn.execute(
        "UPDATE wapool_changelog SET at = ? WHERE seq = (SELECT max(seq) FROM wapool_changelog)",
        (OLD.timestamp(),),
    )
    pruner = Pruner(path)
    pruner.open()
    try:
        batch = pruner.delete(
            SENDER_KEYS, page.keys, after="", cutoff=CUTOFF, read_seq=page.applied_seq
        )
    finally:
        pruner.close()
    assert batch.rows == len(page.keys)
    assert _keys(conn, SENDER_KEYS) == {late}
    conn.close()
    await mirror_once(db, "late", path)
    with psycopg.connect(database_url) as pg:
        row = pg.execute(
            "SELECT written_at < %s FROM store_rows WHERE company_id = 'late' AND pk = %s",
            (CUTOFF, late),
        ).fetchone()
    assert row == (True,), "the late write is expired by its own clock, yet kept"
    verdict = await verify(db, path, "late")
    assert verdict.equal, verdict


def test_a_purge_logs_one_entry_and_leaves_other_deletes_logged(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = new_store(whatsmeow_template, tmp_path, "962302")
    writer = writer_for(path, 3)
    for _ in range(20):
        writer.app_state_sync_key()  # blob key column
    writer.pre_keys(20)  # integer key column
    conn = writer.conn
    purge.prepare(conn)
    schema = read_schema(conn)
    changelog.trim(conn, changelog.last_seq(conn))
    for table in ("whatsmeow_app_state_sync_keys", "whatsmeow_pre_keys"):
        keys = sorted(_keys(conn, table))
        entry = purge.Purge(table, "", keys[9], CUTOFF, 0)
        conn.execute("BEGIN IMMEDIATE")
        assert purge.purge(conn, schema.table(table), keys[:10], entry) == 10
        conn.execute("COMMIT")
        assert _keys(conn, table) == set(keys[10:])
    assert _entries(conn) == [(PURGE_TABLE, "D"), (PURGE_TABLE, "D")]
    assert conn.execute("SELECT count(*) FROM wapool_purging").fetchone() == (0,)
    conn.execute("DELETE FROM whatsmeow_pre_keys")  # whatsmeow's own deletes: logged per row
    assert _entries(conn)[2:] == [("whatsmeow_pre_keys", "D")] * 10
    conn.close()


def test_purges_cut_a_prefix_into_steps(whatsmeow_template: Path, tmp_path: Path) -> None:
    """A write, a purge of that key, the key written again, another purge: each step is
    coalesced on its own, so the last write is not folded into the first and then purged."""
    path = new_store(whatsmeow_template, tmp_path, "962302")
    writer = writer_for(path, 4)
    writer.sender_key()
    conn = writer.conn
    purge.prepare(conn)
    changelog.trim(conn, changelog.last_seq(conn))
    (key,) = _keys(conn, SENDER_KEYS)
    spec = read_schema(conn).table(SENDER_KEYS)
    entries = []
    for value in (b"before", b"after"):
        _sender_key(conn, key, value)
        entries.append(purge.Purge(SENDER_KEYS, "", key, CUTOFF, len(entries)))
        conn.execute("BEGIN IMMEDIATE")
        purge.purge(conn, spec, [key], entries[-1])
        conn.execute("COMMIT")
    _sender_key(conn, key, b"last")

    prefix = changelog.read_prefix(conn)
    assert prefix is not None
    assert prefix.purges == tuple(entries)
    assert [(c.key, c.step) for c in prefix.changes] == [(key, 0), (key, 1), (key, 2)]
    assert prefix.changes[-1].image is not None
    assert prefix.entries == 5
    assert prefix.high_seq == changelog.last_seq(conn)
    conn.close()


def test_a_prefix_holds_at_most_max_purges(whatsmeow_template: Path, tmp_path: Path) -> None:
    path = new_store(whatsmeow_template, tmp_path, "962302")
    writer = writer_for(path, 5)
    conn = writer.conn
    purge.prepare(conn)
    spec = read_schema(conn).table(SENDER_KEYS)
    for n in range(changelog.MAX_PURGES + 3):
        writer.sender_key()
        conn.execute("BEGIN IMMEDIATE")
        purge.purge(conn, spec, [], purge.Purge(SENDER_KEYS, "", str(n), CUTOFF, 0))
        conn.execute("COMMIT")
    first = changelog.read_prefix(conn)
    assert first is not None
    assert len(first.purges) == changelog.MAX_PURGES
    changelog.trim(conn, first.high_seq)
    rest = changelog.read_prefix(conn)
    assert rest is not None
    assert [p.through for p in rest.purges] == [
        str(n) for n in range(changelog.MAX_PURGES, changelog.MAX_PURGES + 3)
    ]
    conn.close()


def test_triggers_of_an_older_capture_are_regenerated_without_a_recheck(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    conn = connect(new_store(whatsmeow_template, tmp_path, "962302"))
    changelog.trim(conn, changelog.last_seq(conn))
    conn.execute("DROP TRIGGER wapool_capture_whatsmeow_sender_keys_ad")
    conn.execute(  # the trigger as capture version 1 made it: no purge exemption
        "CREATE TRIGGER wapool_capture_whatsmeow_sender_keys_ad AFTER DELETE ON "
        "whatsmeow_sender_keys BEGIN INSERT INTO wapool_changelog (tbl, op, pk) "
        "VALUES ('whatsmeow_sender_keys', 'D', 'old'); END"
    )
    set_meta(conn, "capture_version", "1")
    assert install_capture(conn) is False  # whatsmeow's schema did not change
    sql = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'wapool_capture_whatsmeow_sender_keys_ad'"
    ).fetchone()[0]
    assert "wapool_purging" in sql
    assert conn.execute(
        "SELECT value FROM wapool_meta WHERE key = 'capture_version'"
    ).fetchone() == (CAPTURE_VERSION,)
    assert _entries(conn) == []  # no recheck of every row
    conn.close()


def test_a_store_with_an_older_capture_is_refused_unchanged(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = new_store(whatsmeow_template, tmp_path, "962302")
    conn = connect(path)
    conn.execute("DROP TABLE wapool_purging")
    before = dump_rows(conn)
    pruner = Pruner(path)
    with pytest.raises(OutdatedCapture, match="start the daemon once to upgrade it"):
        pruner.open()
    pruner.close()
    assert dump_rows(conn) == before
    conn.close()
