"""Sources to adopt from, written by the tools that write them in the field.

* ``baileys_state``: Baileys itself (npm) makes the creds (``initAuthCreds``) and keys, signs
  the ADV account as a phone would, saves them with ``useMultiFileAuthState`` and prints them
  with its ``BufferJSON``.
* ``old_store``: an old neonize wheel creates a whatsmeow SQLite store in its own schema; the
  Baileys-made device and a realistic spread of key rows are written into it.
* ``postgres_store``: neonize 0.5.2 on a PostgreSQL URL creates whatsmeow's PostgreSQL schema in
  a throwaway database; the same device and rows are written into it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.adopt import toolchains
from wapool.store.adopt.baileys_source import take_baileys
from wapool.store.adopt.source import Taken

HERE = Path(__file__).parent
SCHEMA_SCRIPT = (
    "import sys; from neonize.client import ClientFactory; "
    "print(ClientFactory.get_all_devices_from_db(sys.argv[1]))"
)


@dataclass(frozen=True)
class BaileysState:
    json_path: Path
    folder: Path
    state: dict[str, Any]
    taken: Taken

    @property
    def jid(self) -> str:
        return self.taken.jid

    def public(self, name: str) -> bytes:
        import base64

        return base64.b64decode(self.state["creds"][name]["public"]["data"])


def baileys_state(where: Path, phone: str) -> BaileysState:
    modules = toolchains.node_modules()
    folder = where / f"auth-{phone}"
    result = subprocess.run(
        ["node", str(HERE / "baileys_state.mjs"), str(modules), str(folder), phone],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    path = where / f"baileys-{phone}.json"
    path.write_text(result.stdout)
    return BaileysState(path, folder, json.loads(result.stdout), take_baileys(path))


def extra_rows(jid: str, n: int = 12) -> dict[str, list[dict[str, Any]]]:
    """Rows a running whatsmeow accumulates besides the credentials (synthetic contents)."""
    peers = [f"55119{i:08d}@s.whatsapp.net" for i in range(n)]
    return {
        "whatsmeow_identity_keys": [
            {"our_jid": jid, "their_id": f"{p.split('@')[0]}:0", "identity": bytes([i]) * 32}
            for i, p in enumerate(peers)
        ],
        "whatsmeow_sessions": [
            {"our_jid": jid, "their_id": f"{p.split('@')[0]}:0", "session": bytes([i]) * 300}
            for i, p in enumerate(peers)
        ],
        "whatsmeow_sender_keys": [
            {
                "our_jid": jid,
                "chat_id": f"1203630{i}@g.us",
                "sender_id": f"{p}:0",
                "sender_key": bytes([i]) * 90,
            }
            for i, p in enumerate(peers[:4])
        ],
        "whatsmeow_contacts": [
            {
                "our_jid": jid,
                "their_jid": p,
                "first_name": f"C{i}",
                "full_name": f"Contact {i}",
                "push_name": f"c{i}",
                "business_name": "",
            }
            for i, p in enumerate(peers)
        ],
        "whatsmeow_chat_settings": [
            {"our_jid": jid, "chat_jid": p, "muted_until": 0, "pinned": 1, "archived": 0}
            for p in peers[:3]
        ],
        "whatsmeow_message_secrets": [
            {
                "our_jid": jid,
                "chat_jid": p,
                "sender_jid": p,
                "message_id": f"3EB0{i:04X}",
                "key": bytes([i]) * 32,
            }
            for i, p in enumerate(peers)
        ],
        "whatsmeow_privacy_tokens": [
            {"our_jid": jid, "their_jid": p, "token": bytes([i]) * 24, "timestamp": 1767225600}
            for i, p in enumerate(peers[:5])
        ],
    }


def all_rows(taken: Taken) -> Iterator[tuple[str, dict[str, Any]]]:
    order = ["whatsmeow_device", "whatsmeow_app_state_version"]
    names = sorted(taken.tables, key=lambda t: (order.index(t) if t in order else 9, t))
    for name in names:
        for row in taken.tables[name]:
            yield name, row
    for name, rows in extra_rows(taken.jid).items():
        for row in rows:
            yield name, row


def old_store(version: str, path: Path, taken: Taken) -> None:
    """A whatsmeow SQLite store made by neonize ``version``, holding the device and rows."""
    python = toolchains.old_neonize(version)
    result = subprocess.run(
        [str(python), "-c", SCHEMA_SCRIPT, str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with closing(sqlite3.connect(path)) as conn, conn:
        for table, row in all_rows(taken):
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            row = {c: v for c, v in row.items() if c in columns}
            conn.execute(
                f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )


def postgres_store(url: str, taken: Taken) -> None:
    """whatsmeow's PostgreSQL schema, made by neonize 0.5.2, holding the device and rows."""
    neonize_url = url.replace("postgresql://", "postgres://") + "?sslmode=disable"
    result = subprocess.run(
        [sys.executable, "-c", SCHEMA_SCRIPT, neonize_url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with psycopg.connect(url, autocommit=False) as conn:
        for table, row in all_rows(taken):
            values = [
                bool(v) if c in ("uploaded", "pinned", "archived") else v for c, v in row.items()
            ]
            conn.execute(
                f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
                values,
            )


def keys_by_table(conn: sqlite3.Connection, jid: str) -> dict[str, set[tuple[Any, ...]]]:
    """Primary keys per whatsmeow table, of one device's rows (and the shared tables')."""
    found: dict[str, set[tuple[Any, ...]]] = {}
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'whatsmeow_%'"
        )
    ]
    for table in tables:
        info = conn.execute(f"PRAGMA table_info({table})").fetchall()
        pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]] or [r[1] for r in info]
        names = [r[1] for r in info]
        column = next((c for c in ("jid", "our_jid") if c in names), None)
        query = f"SELECT {', '.join(pk)} FROM {table}"
        rows = (
            conn.execute(query + f" WHERE {column} = ?", (jid,)) if column else conn.execute(query)
        )
        found[table] = {tuple(r) for r in rows}
    return found
