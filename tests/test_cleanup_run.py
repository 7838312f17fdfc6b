"""The cleanup on real stores: a neonize-made working store mirrored into a real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.conftest import make_settings, mirror_once, new_store
from tests.test_mirror import add_companies, writer_for
from wapool.cleanup import postgres
from wapool.cleanup.executor import Cancelled, CleanupRun
from wapool.cleanup.policy import RetentionPolicy
from wapool.cleanup.service import CleanupService
from wapool.db.pool import Database
from wapool.store.dump import dump_rows
from wapool.store.verify import verify
from wapool.store.working_store import connect, prepare_dir, quick_check
from wapool.whatsapp.neonize_store import create_schema

pytestmark = pytest.mark.timeout(120)

ALLOWED = {"whatsmeow_message_secrets", "whatsmeow_sender_keys"}
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)


def _dump(path: Path) -> dict[tuple[str, str], str]:
    conn = connect(path)
    try:
        return dump_rows(conn)
    finally:
        conn.close()


def _pg_rows(url: str) -> list[tuple[str, str, str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT company_id, tbl, pk, image FROM store_rows").fetchall()
        return sorted((str(a), str(b), str(c), str(d)) for a, b, c, d in rows)


def _age(url: str, company: str, keys: set[tuple[str, str]]) -> None:
    """Pretend these rows were last written 40 days ago (the mirror's clock in PostgreSQL)."""
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "UPDATE store_rows SET written_at = %s WHERE company_id = %s AND tbl = %s AND pk = %s",
            [(OLD, company, t, k) for t, k in keys],
        )


async def _store_with_history(db: Database, url: str, template: Path, state: Path) -> Path:
    add_companies(url, "962302")
    path = new_store(template, state, "962302")
    writer = writer_for(path, 5)
    for _ in range(300):
        writer.random_transaction()
    for _ in range(50):
        writer.message_secret()
        writer.sender_key()
    writer.conn.close()
    await mirror_once(db, "962302", path)
    return path


def _policy() -> RetentionPolicy:
    return RetentionPolicy.build(30)


async def test_only_expired_rows_of_allowed_tables_go(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = await _store_with_history(db, database_url, whatsmeow_template, tmp_path)
    devices = create_schema([path])[path]
    before = _dump(path)
    # Age every row except a few recent ones in each allowed table.
    keep = {k for k in before if k[0] in ALLOWED and hash(k[1]) % 4 == 0}
    _age(database_url, "962302", set(before) - keep)
    # A sender key rewritten locally after its last mirrored write (not yet in PostgreSQL).
    rewritten = next(k for k in sorted(before) if k[0] == "whatsmeow_sender_keys" and k not in keep)
    conn = connect(path)
    conn.execute(
        "UPDATE whatsmeow_sender_keys SET sender_key = x'00' WHERE our_jid = ? AND chat_id = ? "
        "AND sender_id = ?",
        [v[1:] for v in json.loads(rewritten[1])],
    )
    conn.close()

    result = await CleanupRun(db, _policy(), tmp_path, batch_rows=7).run(NOW)

    after = _dump(path)
    gone = set(before) - set(after)
    expected = {k for k in before if k[0] in ALLOWED and k not in keep and k != rewritten}
    assert gone == expected
    assert expected  # the test really deletes something
    assert result.rows == len(expected)
    for key in after:  # protected tables untouched, byte for byte
        if key[0] not in ALLOWED:
            assert after[key] == before[key]
    assert rewritten in after
    quick_check(path)
    assert create_schema([path])[path] == devices  # whatsmeow still loads the device

    await mirror_once(db, "962302", path)
    verdict = await verify(db, path, "962302")
    assert verdict.equal, verdict


async def test_dry_run_plan_counts_and_changes_nothing(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = await _store_with_history(db, database_url, whatsmeow_template, tmp_path)
    before = _dump(path)
    aged = {k for k in before if k[0] != "whatsmeow_device"}
    _age(database_url, "962302", aged)
    digest_before = _digest(path, database_url)
    policy = _policy()
    cutoffs = {t: policy.cutoff(t, NOW) for t in policy.tables}
    plan = await postgres.plan(db, cutoffs, policy.removed_cutoff(NOW))
    assert _digest(path, database_url) == digest_before
    counts = {(r.company_id, r.table): r.rows for r in plan}
    assert counts == {("962302", t): sum(1 for k in aged if k[0] == t) for t in ALLOWED}
    assert all(r.bytes > 0 for r in plan)


async def test_company_without_local_store_removed_companies_and_tombstones(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    add_companies(database_url, "remote", "gone", "recent")
    with psycopg.connect(database_url) as conn:
        for company in ("remote", "gone", "recent"):
            conn.execute(
                "INSERT INTO store_copies (company_id, store_uuid, schema_version, "
                "schema_fingerprint, schema_ddl) VALUES (%s, gen_random_uuid(), 1, 'f', '')",
                (company,),
            )
            for table in ("whatsmeow_message_secrets", "whatsmeow_sessions"):
                for n in range(12_000 if company == "remote" else 3):
                    written = OLD if n % 2 else NOW
                    conn.execute(
                        "INSERT INTO store_rows VALUES (%s, %s, %s, '[\"x00\"]', %s)",
                        (company, table, f'["i{n}"]', written),
                    )
        conn.execute("UPDATE companies SET removed_at = %s WHERE id = 'gone'", (OLD,))
        conn.execute("UPDATE companies SET removed_at = %s WHERE id = 'recent'", (NOW,))
        conn.execute(
            "INSERT INTO store_tombstones VALUES ('recent', %s, 't', 'k', 'i', %s), "
            "('recent', %s, 't', 'k', 'i', %s)",
            (OLD, OLD, NOW, NOW),
        )

    result = await CleanupRun(db, _policy(), tmp_path).run(NOW)

    with psycopg.connect(database_url) as conn:
        left = conn.execute(
            "SELECT company_id, tbl, count(*) FROM store_rows GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        companies = conn.execute("SELECT id FROM companies ORDER BY id").fetchall()
        tombstones = conn.execute("SELECT count(*) FROM store_tombstones").fetchone()
    assert left == [
        ("recent", "whatsmeow_message_secrets", 2),  # removed recently: retention applies
        ("recent", "whatsmeow_sessions", 3),
        ("remote", "whatsmeow_message_secrets", 6_000),
        ("remote", "whatsmeow_sessions", 12_000),
    ]
    assert companies == [("recent",), ("remote",)]
    assert tombstones == (1,)
    assert result.deleted[("remote", "whatsmeow_message_secrets")][0] == 6_000
    assert result.deleted[("gone", postgres.REMOVED)][0] == 6


async def test_stop_cancels_between_batches_and_next_run_resumes(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    path = await _store_with_history(db, database_url, whatsmeow_template, tmp_path)
    before = _dump(path)
    _age(database_url, "962302", set(before))
    expired = {k for k in before if k[0] in ALLOWED}
    stop = asyncio.Event()
    seen: list[int] = []

    def progress(_company: str, _table: str, rows: int) -> None:
        seen.append(rows)
        if len(seen) == 3:
            stop.set()

    with pytest.raises(Cancelled):
        await CleanupRun(db, _policy(), tmp_path, batch_rows=5, stop=stop, progress=progress).run(
            NOW
        )
    first = len(set(before) - set(_dump(path)))
    assert first == seen[-1] < len(expired)  # three batches, then a clean stop
    result = await CleanupRun(db, _policy(), tmp_path, batch_rows=5).run(NOW)
    assert set(before) - set(_dump(path)) == expired
    assert result.rows == len(expired) - first


def _digest(path: Path, url: str) -> str:
    h = hashlib.sha256()
    for item in sorted(_dump(path).items()):
        h.update(repr(item).encode())
    for row in _pg_rows(url):
        h.update(repr(row).encode())
    with psycopg.connect(url) as conn:
        for table in ("cleanup_runs", "store_size_history", "store_tombstones", "companies"):
            h.update(repr(conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()).encode())
    return h.hexdigest()


async def test_company_driven_on_another_host_is_left_to_it(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    """No local store here, but another daemon holds the lease: its store is the source of
    truth, so pruning the PostgreSQL copy behind its back would make them diverge."""
    add_companies(database_url, "elsewhere")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO store_copies (company_id, store_uuid, schema_version, "
            "schema_fingerprint, schema_ddl) VALUES ('elsewhere', gen_random_uuid(), 1, 'f', '')"
        )
        conn.execute(
            "INSERT INTO store_rows VALUES ('elsewhere', 'whatsmeow_message_secrets', '[\"i1\"]', "
            "'[\"x00\"]', %s)",
            (OLD,),
        )
        conn.execute(
            "INSERT INTO company_leases VALUES ('elsewhere', 'other-host:/var/lib/wapool', 1, "
            "now() + interval '1 minute')"
        )
    result = await CleanupRun(db, _policy(), tmp_path).run(NOW)
    assert result.rows == 0
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM store_rows").fetchone() == (1,)
        conn.execute("UPDATE company_leases SET expires_at = now() - interval '1 second'")
    result = await CleanupRun(db, _policy(), tmp_path).run(NOW)  # lease gone: pruned directly
    assert result.rows == 1


async def test_each_daemon_prunes_the_companies_it_drives(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    """Daemon b drives 962302 (its lease, its store). Daemon a runs the cluster-wide cleanup
    and leaves 962302 alone, though it has an old store of it; b, finding the slot taken,
    prunes 962302 in its own store, and its mirror brings PostgreSQL along."""
    path = await _store_with_history(db, database_url, whatsmeow_template, tmp_path / "b")
    old_copy = prepare_dir(tmp_path / "a", "962302")
    shutil.copyfile(path, old_copy)  # left behind when the company moved from a to b
    before, old_before = _dump(path), _dump(old_copy)
    _age(database_url, "962302", {k for k in before if k[0] in ALLOWED})
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO company_leases VALUES ('962302', 'b', 1, now() + interval '1 minute')"
        )
    slot = datetime(2026, 11, 29, 3, tzinfo=UTC)
    a = CleanupService(db, make_settings(database_url, tmp_path / "a", node_name="a"))
    b = CleanupService(db, make_settings(database_url, tmp_path / "b", node_name="b"))

    ran = await a.run(slot)
    assert ran is not None
    assert ran.rows == 0
    assert _dump(path) == before
    assert _dump(old_copy) == old_before

    assert await b.run(slot) is None  # the slot ran on a: b only prunes what it drives
    assert b.last is not None
    assert b.last.status == "done"
    gone = set(before) - set(_dump(path))
    assert gone == {k for k in before if k[0] in ALLOWED}
    assert b.last.rows == len(gone)
    await mirror_once(db, "962302", path)
    verdict = await verify(db, path, "962302")
    assert verdict.equal, verdict
