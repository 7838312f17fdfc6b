"""Writes shaped like whatsmeow's, against a real working store (real whatsmeow schema).

Used by tests, benchmarks and (later) the simulated backend. Each method is one whatsmeow-like
transaction: the statements mirror what whatsmeow's sqlstore issues (read from its source:
upserts with ``ON CONFLICT``, ``DO NOTHING`` for message secrets, delete-then-upsert on the LID
map, multi-row app-state batches, FK-cascading deletes on logout).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time

from wapool.store.working_store import transaction


class WhatsmeowWriter:
    def __init__(self, conn: sqlite3.Connection, rng: random.Random | None = None) -> None:
        self.conn = conn
        self.rng = rng or random.Random()
        self.jid = ""

    def _bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def _contact(self) -> str:
        return f"55{self.rng.randrange(10**10, 10**11)}@s.whatsapp.net"

    def _txn(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        with transaction(self.conn, immediate=True):
            for sql, params in statements:
                self.conn.execute(sql, params)

    def pair(self, user: str | None = None) -> str:
        """Insert the device (credentials) as pairing does; returns the JID."""
        self.jid = f"{user or self.rng.randrange(10**11, 10**12)}.0:{self.rng.randrange(1, 60)}@s.whatsapp.net"
        self._txn(
            (
                "INSERT INTO whatsmeow_device (jid, lid, registration_id, noise_key, identity_key, "
                "signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, "
                "adv_account_sig, adv_account_sig_key, adv_device_sig, platform, business_name, "
                "push_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (jid) DO UPDATE SET push_name = excluded.push_name",
                (
                    self.jid, f"{self.rng.randrange(10**13)}:1@lid", self.rng.randrange(2**32),
                    self._bytes(32), self._bytes(32), self._bytes(32), self.rng.randrange(2**24),
                    self._bytes(64), self._bytes(32), self._bytes(120), self._bytes(64),
                    self._bytes(32), self._bytes(64), "android", "", "Acme",
                ),
            ),
        )  # fmt: skip
        return self.jid

    def session(self, their: str | None = None) -> None:
        self._txn(
            (
                "INSERT INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?, ?, ?) "
                "ON CONFLICT (our_jid, their_id) DO UPDATE SET session = excluded.session",
                (self.jid, their or self._contact(), self._bytes(self.rng.randrange(300, 1500))),
            ),
        )

    def identity(self, their: str | None = None) -> None:
        self._txn(
            (
                "INSERT INTO whatsmeow_identity_keys (our_jid, their_id, identity) VALUES (?, ?, ?) "
                "ON CONFLICT (our_jid, their_id) DO UPDATE SET identity = excluded.identity",
                (self.jid, their or self._contact(), self._bytes(32)),
            ),
        )

    def sender_key(self) -> None:
        self._txn(
            (
                "INSERT INTO whatsmeow_sender_keys (our_jid, chat_id, sender_id, sender_key) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (our_jid, chat_id, sender_id) "
                "DO UPDATE SET sender_key = excluded.sender_key",
                (self.jid, f"{self.rng.randrange(10**12)}@g.us", self._contact(), self._bytes(200)),
            ),
        )

    def message_secret(self) -> None:
        self._txn(
            (
                "INSERT INTO whatsmeow_message_secrets (our_jid, chat_jid, sender_jid, message_id, "
                "key) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (self.jid, self._contact(), self._contact(), os.urandom(8).hex().upper(),
                 self._bytes(32)),
            ),
        )  # fmt: skip

    def pre_keys(self, count: int = 10) -> None:
        """Generate and mark uploaded a batch of pre-keys, in one transaction."""
        row = self.conn.execute(
            "SELECT coalesce(max(key_id), 0) FROM whatsmeow_pre_keys WHERE jid = ?", (self.jid,)
        ).fetchone()
        start = int(row[0]) + 1
        self._txn(
            *[
                ("INSERT INTO whatsmeow_pre_keys (jid, key_id, key, uploaded) VALUES (?, ?, ?, false)",
                 (self.jid, key_id, self._bytes(32)))
                for key_id in range(start, start + count)
            ],
            ("UPDATE whatsmeow_pre_keys SET uploaded = true WHERE jid = ? AND key_id >= ?",
             (self.jid, start)),
        )  # fmt: skip

    def consume_pre_key(self) -> None:
        row = self.conn.execute(
            "SELECT key_id FROM whatsmeow_pre_keys WHERE jid = ? ORDER BY key_id LIMIT 1",
            (self.jid,),
        ).fetchone()
        if row:
            self._txn(
                ("DELETE FROM whatsmeow_pre_keys WHERE jid = ? AND key_id = ?", (self.jid, row[0]))
            )

    def app_state(self) -> None:
        """A version bump with mutation MACs added and removed, in one transaction."""
        name = self.rng.choice(["critical_block", "regular", "regular_high", "regular_low"])
        version = self.rng.randrange(1, 10**6)
        mac = self._bytes(32)
        self._txn(
            ("INSERT INTO whatsmeow_app_state_version (jid, name, version, hash) VALUES (?, ?, ?, ?) "
             "ON CONFLICT (jid, name) DO UPDATE SET version = excluded.version, hash = excluded.hash",
             (self.jid, name, version, self._bytes(128))),
            ("INSERT INTO whatsmeow_app_state_mutation_macs (jid, name, version, index_mac, value_mac) "
             "VALUES (?, ?, ?, ?, ?)", (self.jid, name, version, mac, self._bytes(32))),
            ("DELETE FROM whatsmeow_app_state_mutation_macs WHERE jid = ? AND name = ? AND version < ?",
             (self.jid, name, version - 5)),
        )  # fmt: skip

    def app_state_sync_key(self) -> None:
        self._txn(
            ("INSERT INTO whatsmeow_app_state_sync_keys (jid, key_id, key_data, timestamp, fingerprint) "
             "VALUES (?, ?, ?, ?, ?) ON CONFLICT (jid, key_id) DO UPDATE SET key_data = excluded.key_data, "
             "timestamp = excluded.timestamp, fingerprint = excluded.fingerprint",
             (self.jid, self._bytes(6), self._bytes(32), int(time.time() * 1000), self._bytes(40))),
        )  # fmt: skip

    def lid_mapping(self, lid: str | None = None, pn: str | None = None) -> None:
        """As whatsmeow stores a LID mapping: drop the number's old mapping, then upsert."""
        lid = lid or f"{self.rng.randrange(10**14)}@lid"
        pn = pn or self._contact()
        self._txn(
            ("DELETE FROM whatsmeow_lid_map WHERE pn = ? AND lid <> ?", (pn, lid)),
            ("INSERT INTO whatsmeow_lid_map (lid, pn) VALUES (?, ?) "
             "ON CONFLICT (lid) DO UPDATE SET pn = excluded.pn WHERE whatsmeow_lid_map.pn <> excluded.pn",
             (lid, pn)),
        )  # fmt: skip

    def lid_mapping_replace(self, lid: str, pn: str) -> None:
        """``INSERT OR REPLACE``: whatsmeow does not use it, but a REPLACE must not slip by."""
        self._txn(("INSERT OR REPLACE INTO whatsmeow_lid_map (lid, pn) VALUES (?, ?)", (lid, pn)))

    def contact(self) -> None:
        self._txn(
            ("INSERT INTO whatsmeow_contacts (our_jid, their_jid, first_name, full_name, push_name) "
             "VALUES (?, ?, ?, ?, ?) ON CONFLICT (our_jid, their_jid) DO UPDATE SET "
             "push_name = excluded.push_name",
             (self.jid, self._contact(), "Ana", "Ana Souza", f"Ana {self.rng.randrange(100)}")),
        )  # fmt: skip

    def logout(self) -> None:
        """whatsmeow deletes the device; foreign keys cascade to every key table."""
        self._txn(("DELETE FROM whatsmeow_device WHERE jid = ?", (self.jid,)))

    def random_transaction(self) -> None:
        """One whatsmeow-like transaction, weighted like real traffic."""
        action = self.rng.choices(
            [self.session, self.identity, self.sender_key, self.message_secret,
             self.consume_pre_key, self.app_state, self.lid_mapping, self.contact,
             self.app_state_sync_key, self.pre_keys],
            weights=[30, 5, 15, 25, 5, 5, 5, 5, 3, 2],
        )[0]  # fmt: skip
        action()
