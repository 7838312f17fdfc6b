"""Message bodies encrypted at rest on a real PostgreSQL: inbound events and outbound content
sealed with the company's data key (a producer's plaintext row sealed when it is claimed),
read back through ``messaging.stored`` and ``wapool messages``, moved ciphertext refused by
name, a company without a usable key waiting instead of writing plaintext, plaintext messages
re-encrypted online, and a running daemon following a master key rotation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.daemon import Daemons
from wapool.crypto import keyring, rotation
from wapool.crypto.envelope import RowCipher, RowUnreadable
from wapool.crypto.key_watch import KeyWatch
from wapool.crypto.usage import usage
from wapool.db.pool import Database
from wapool.leases import Leases
from wapool.messaging import model
from wapool.messaging.cursors import Cursors
from wapool.messaging.inbound_mirror import InboundMirror
from wapool.messaging.inbox import InboxWriter
from wapool.messaging.outbound import Media, Outbound, Status
from wapool.messaging.outbound_pg import OutboundSync
from wapool.messaging.outbox import Outbox
from wapool.messaging.stored import inbound_after

pytestmark = pytest.mark.timeout(120)
JID = "491701234567@s.whatsapp.net"


def key_file(path: Path, *keys: keyring.MasterKey) -> keyring.Keyring:
    keyring.write(path, list(keys) or [keyring.new_key()])
    ring = keyring.load(path)
    assert ring is not None
    return ring


def message(n: int, company: str, secret: str) -> model.InboundMessage:
    return model.InboundMessage(
        company=company, message_id=f"M{n}", chat="c@s.whatsapp.net", sender="c@s.whatsapp.net",
        timestamp=1_700_000_000.0 + n, kind="image", text=f"{secret} caption {n}",
        push_name="Ana", media=model.Media("image", "image/jpeg", 10, "ab" * 32, f"{secret}.jpg"),
    )  # fmt: skip


def add_company(url: str, *companies: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for company in companies:
            conn.execute("INSERT INTO companies (id) VALUES (%s)", (company,))


async def inbound(db: Database, tmp: Path, company: str, secret: str, count: int = 3) -> int:
    """``count`` messages through an inbox and the inbound mirror; returns rows mirrored."""
    (tmp / company).mkdir(parents=True, exist_ok=True)
    inbox = InboxWriter(tmp / company / "inbox.db")
    for n in range(count):
        inbox.append(message(n, company, secret))
    inbox.close()
    mirror = InboundMirror(db, Cursors(tmp / f"cursors-{company}.db"))
    mirror.add(company, tmp / company / "inbox.db")
    done = await mirror.tick()
    mirror.remove(company)
    return done


async def outbound(db: Database, url: str, tmp: Path, company: str, secret: str) -> Outbox:
    """One message through the API's outbox (mirrored) and one a producer inserted in
    plaintext (claimed); returns the outbox (the local copies)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbound_messages (company_id, to_jid, text, idempotency_key, media, "
            "media_mimetype, media_filename) VALUES (%s, %s, %s, 'sql-1', %s, 'image/png', %s)",
            (company, JID, f"{secret} from sql", f"{secret} png".encode(), f"{secret}.png"),
        )
    leases = Leases(db, f"node-{company}", seconds=30)
    assert await leases.acquire([company]) == {company: 1}
    box = Outbox(tmp / f"outbox-{company}.db")
    sync = OutboundSync(db, box, leases, lambda _: None)
    await sync.step()  # adopt, claim the producer's row
    await box.accept(Outbound(company, JID, f"{secret} from the api", idempotency_key="api-1",
                              media=Media(f"{secret} jpeg".encode(), "image/jpeg", "a.jpg")))  # fmt: skip
    await sync.mirror()
    return box


async def test_inbound_and_outbound_bodies_are_sealed_and_read_back(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    ring = key_file(tmp_path / "master.key")
    db.cipher = RowCipher(ring)
    add_company(database_url, "acme")
    assert await inbound(db, tmp_path, "acme", "zebra") == 3
    box = await outbound(db, database_url, tmp_path, "acme", "zebra")

    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT body, event, sealed, kind, chat_jid FROM inbound_messages")
        for body, event, sealed, kind, chat in rows:
            assert (body, event, kind, chat) == ("", None, "image", "c@s.whatsapp.net")
            assert bytes(sealed).startswith(b"e1:")
        out = conn.execute(
            "SELECT text, media, media_filename, media_mimetype, sealed, status FROM "
            "outbound_messages ORDER BY idempotency_key"
        ).fetchall()
    assert [(t, m, f, s[:3]) for t, m, f, _, s, _ in out] == [("", None, None, b"e1:")] * 2
    assert [r[3] for r in out] == ["image/jpeg", "image/png"]  # the kind stays queryable

    read = await inbound_after(db, "acme", None, 10)
    assert [m.event for m in read] == [model.to_json(message(n, "acme", "zebra")) for n in range(3)]
    assert read[0].text == "zebra caption 0"
    claimed = box.by_key("acme", "sql-1")  # the local copy, opened: sendable
    assert claimed is not None
    assert claimed.status is Status.QUEUED
    assert box.payload(claimed.id) == (b"zebra png", "zebra from sql", "zebra.png")

    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path / "cli"),
           "WAPOOL_MASTER_KEY_FILE": str(tmp_path / "master.key")}  # fmt: skip
    sent = run_cli("send", "acme", JID, "zebra by cli", "--key", "cli-1", env=env, cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    with psycopg.connect(database_url) as conn:
        text, sealed = conn.execute(
            "SELECT text, sealed FROM outbound_messages WHERE idempotency_key = 'cli-1'"
        ).fetchone() or ("?", None)
    assert text == ""
    assert sealed is not None
    shown = run_cli("messages", "acme", "--json", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    texts = {r["text"] for r in lines}
    assert {"zebra caption 2", "zebra from sql", "zebra from the api", "zebra by cli"} <= texts
    first = next(r for r in lines if r["message_id"] == "M0")
    assert first["event"]["media"]["file_name"] == "zebra.jpg"

    keyless = {k: v for k, v in env.items() if k != "WAPOOL_MASTER_KEY_FILE"}
    without_key = run_cli("messages", "acme", env=keyless, cwd=tmp_path)
    assert without_key.returncode != 0
    assert "no master key is configured" in without_key.stderr
    box.close()


async def test_moved_message_ciphertext_fails_loudly_naming_the_message(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    db.cipher = RowCipher(key_file(tmp_path / "master.key"))
    add_company(database_url, "one", "two")
    await inbound(db, tmp_path, "one", "alpha")
    await inbound(db, tmp_path, "two", "beta")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE inbound_messages SET sealed = (SELECT sealed FROM inbound_messages WHERE "
            "company_id = 'one' AND message_id = 'M0') WHERE company_id = 'one' "
            "AND message_id = 'M1'"
        )
        conn.execute(
            "UPDATE inbound_messages SET sealed = (SELECT sealed FROM inbound_messages WHERE "
            "company_id = 'one' AND message_id = 'M2') WHERE company_id = 'two' "
            "AND message_id = 'M2'"
        )
    with pytest.raises(RowUnreadable, match="company 'one': inbound_messages message M1"):
        await inbound_after(db, "one", None, 10)
    with pytest.raises(RowUnreadable, match="company 'two': inbound_messages message M2"):
        await inbound_after(db, "two", None, 10)
    assert [m.message_id for m in await inbound_after(db, "two", -1, 2)] == ["M0", "M1"]


async def test_a_company_without_a_usable_key_keeps_its_messages_in_the_inbox(
    db: Database, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wapool.messaging import inbound_mirror

    monkeypatch.setattr(inbound_mirror, "KEY_RETRY_SECONDS", 0.0)  # tried again at every tick
    ring = key_file(tmp_path / "master.key")
    db.cipher = RowCipher(ring)
    add_company(database_url, "stuck", "fine")
    await db.cipher.prepare(db, ["stuck", "fine"])
    with psycopg.connect(database_url, autocommit=True) as conn:  # another host's key
        conn.execute("UPDATE store_data_keys SET master_key_id = 'elsewhere' "
                     "WHERE company_id = 'stuck'")  # fmt: skip
    db.cipher = RowCipher(ring)  # a process started since: nothing cached
    for company in ("stuck", "fine"):
        (tmp_path / company).mkdir()
        inbox = InboxWriter(tmp_path / company / "inbox.db")
        for n in range(2):
            inbox.append(message(n, company, "gamma"))
        inbox.append(message(9, "ghost", "gamma"))  # no such company: skipped, as before
        inbox.close()
    mirror = InboundMirror(db, Cursors(tmp_path / "cursors.db"))
    for company in ("stuck", "fine"):
        mirror.add(company, tmp_path / company / "inbox.db")
    assert await mirror.tick() == 3  # fine's two and the ghost, skipped
    assert await mirror.tick() == 0  # stuck's key is still unusable: its inbox waits
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT company_id, sealed IS NOT NULL FROM inbound_messages")
        assert sorted(rows) == [("fine", True), ("fine", True)]
        conn.execute("UPDATE store_data_keys SET master_key_id = %s WHERE company_id = 'stuck'",
                     (ring.current.key_id,))  # fmt: skip
    assert await mirror.tick() == 3  # the key is back: its messages, sealed
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT company_id, sealed IS NOT NULL FROM inbound_messages")
        assert sorted(rows) == [("fine", True)] * 2 + [("stuck", True)] * 2


async def test_plaintext_messages_are_encrypted_online_and_resumably(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    add_company(database_url, "legacy")
    await inbound(db, tmp_path, "legacy", "delta", count=7)
    box = await outbound(db, database_url, tmp_path, "legacy", "delta")
    box.close()
    found = await usage(db)
    assert (found.sealed_messages, found.plaintext_messages) == (0, 9)

    db.cipher = RowCipher(key_file(tmp_path / "master.key"))
    assert await rotation.companies_with_rows(db) == ["legacy"]
    first = await rotation.reencrypt(db, "legacy", batch=3, pause=0)
    assert first.rewritten == 9
    assert (await rotation.reencrypt(db, "legacy", batch=3, pause=0)).rewritten == 0
    found = await usage(db)
    assert (found.sealed_messages, found.plaintext_messages) == (9, 0)
    read = await inbound_after(db, "legacy", None, 10)
    assert [m.text for m in read] == [f"delta caption {n}" for n in range(7)]
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM inbound_messages WHERE event IS NOT NULL OR body <> ''"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM outbound_messages WHERE text <> '' OR media IS NOT NULL "
            "OR media_filename IS NOT NULL"
        ).fetchone() == (0,)
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path / "cli"),
           "WAPOOL_MASTER_KEY_FILE": str(tmp_path / "master.key")}  # fmt: skip
    shown = run_cli("messages", "legacy", "--json", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    texts = {json.loads(line)["text"] for line in shown.stdout.splitlines()}
    assert {"delta from sql", "delta from the api", "delta caption 6"} <= texts


async def test_key_watch_follows_a_rotation_and_new_companies_use_the_new_key(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "master.key"
    old = key_file(path)
    db.cipher = RowCipher(old)
    add_company(database_url, "before")
    await db.cipher.prepare(db, ["before"])
    watch = KeyWatch(db, path)
    assert await watch.check() is False  # nothing changed

    new = keyring.new_key()
    ring = key_file(path, new, *old.keys)  # as `wapool keys rotate` does: file, then re-wrap
    assert await rotation.rewrap(db, ring, batch=1) == 1
    assert await watch.check() is True
    assert db.cipher.keyring is not None
    assert db.cipher.keyring.current == new
    add_company(database_url, "after")
    await db.cipher.prepare(db, ["after"])
    wrapped = dict(await db.fetch("SELECT company_id, master_key_id FROM store_data_keys"))
    assert wrapped == {"before": new.key_id, "after": new.key_id}
    assert await watch.check() is False

    # Another host rotated to a key this host's file lacks: reported, the ring in use is kept.
    other = keyring.new_key()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE store_data_keys SET master_key_id = %s WHERE company_id = 'after'",
                     (other.key_id,))  # fmt: skip
    assert await watch.check() is False
    key_file(path, other, new, *old.keys)  # this host's file brought up to date
    assert await watch.check() is True
    assert db.cipher.keyring.get(other.key_id) is not None
    os.chmod(path, 0o644)  # a broken file: refused, the keyring in use kept
    os.utime(path, ns=(1, 1))
    assert await watch.check() is False
    assert db.cipher.keyring.current == other


def test_a_running_daemon_picks_up_a_rotation(
    database_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    key = tmp_path / "master.key"
    old = key_file(key)
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path / "state"),
           "WAPOOL_MASTER_KEY_FILE": str(key), "WAPOOL_MASTER_KEY_CHECK_SECONDS": "0.2",
           "WAPOOL_WHATSAPP_BACKEND": "simulated"}  # fmt: skip
    add_company(database_url, "first")
    daemon = daemons.start(env)
    daemon.wait_for("event=daemon_ready")
    rotated = run_cli("keys", "rotate", env=env, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    new = keyring.load(key)
    assert new is not None
    assert new.current != old.current
    daemon.wait_for("event=master_key_reloaded")
    add_company(database_url, "second")  # its data key is made by the running daemon
    wrapped: list[tuple[str]] = []
    deadline = time.monotonic() + 30
    while not wrapped:
        assert time.monotonic() < deadline, "the daemon made no data key for the new company"
        time.sleep(0.1)  # polling what the daemon writes, not hoping: bounded by the deadline
        with psycopg.connect(database_url) as conn:
            wrapped = conn.execute(
                "SELECT master_key_id FROM store_data_keys WHERE company_id = 'second'"
            ).fetchall()
    assert wrapped == [(new.current.key_id,)]
    assert daemon.stop(timeout=15) == 0
