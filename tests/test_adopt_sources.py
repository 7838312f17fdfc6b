"""The parts of adoption that need no toolchain: Baileys' value forms, whatsmeow's encodings,
and sources refused before anything is built."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from wapool.store.adopt.baileys_source import (
    _buffer,
    _device_jid,
    _fingerprint_proto,
    _Reader,
    take_baileys,
)
from wapool.store.adopt.source import BadSource
from wapool.store.adopt.sqlite_source import take_sqlite
from wapool.store.leftovers import stale_temporaries


def test_bytes_in_every_form_bufferjson_and_protobuf_json_write() -> None:
    assert _buffer({"type": "Buffer", "data": "AQID"}) == b"\x01\x02\x03"
    assert _buffer({"type": "Buffer", "data": [1, 2, 3]}) == b"\x01\x02\x03"  # older Baileys
    assert _buffer({"0": 1, "1": 2, "2": 3}) == b"\x01\x02\x03"  # a serialised Uint8Array
    assert _buffer("AQID") == b"\x01\x02\x03"  # protobuf JSON (app-state keys)
    assert _buffer("not base64!") is None
    assert _buffer({"type": "Buffer", "data": [1, 999]}) is None


def test_int64_in_every_form_protobuf_json_writes() -> None:
    reader = _Reader("baileys x", {}, {})
    assert reader._long("1767225600000", "t") == 1767225600000
    assert reader._long(1767225600000, "t") == 1767225600000
    assert reader._long({"low": -1, "high": 1, "unsigned": False}, "t") == (1 << 33) - 1
    with pytest.raises(BadSource, match=r"^baileys x: t is not a number$"):
        reader._long("soon", "t")


def test_device_jids_take_whatsmeows_form() -> None:
    assert _device_jid("5511987654321:4@s.whatsapp.net") == "5511987654321:4@s.whatsapp.net"
    assert _device_jid("5511987654321.0:4@s.whatsapp.net") == "5511987654321:4@s.whatsapp.net"
    assert _device_jid("5511987654321:0@s.whatsapp.net") == "5511987654321@s.whatsapp.net"
    assert _device_jid("123456789:4@lid") == "123456789:4@lid"


@pytest.mark.parametrize("indexes", [[], [0], [0, 3, 200]])
def test_fingerprint_is_encoded_as_whatsmeow_marshals_it(indexes: list[int]) -> None:
    ours = _fingerprint_proto({"rawId": 100, "currentIndex": 2, "deviceIndexes": indexes})
    theirs = e2e.AppStateSyncKeyFingerprint(rawID=100, currentIndex=2, deviceIndexes=indexes)
    assert ours == theirs.SerializeToString()


def test_an_unpaired_auth_state_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"creds": {"registrationId": 1}, "keys": {}}))
    with pytest.raises(
        BadSource, match=r"creds\.me\.id is missing: the auth state was never paired"
    ):
        take_baileys(path)
    path.write_text("{not json")
    with pytest.raises(BadSource, match=r"^baileys .*: not JSON"):
        take_baileys(path)


def test_sqlite_sources_refused_before_anything_is_built(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    empty = tmp_path / "empty.db"
    empty.write_bytes(whatsmeow_template.read_bytes())
    with pytest.raises(BadSource, match="holds no device"):
        take_sqlite(empty, None, work)
    newer = tmp_path / "newer.db"
    newer.write_bytes(whatsmeow_template.read_bytes())
    with closing(sqlite3.connect(newer)) as conn, conn:
        conn.execute("UPDATE whatsmeow_version SET version = 99")
    with pytest.raises(BadSource, match="whatsmeow schema version 99 is newer than this wapool's"):
        take_sqlite(newer, None, work)
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn, conn:
        conn.execute("CREATE TABLE notes (x)")
    with pytest.raises(BadSource, match="not a whatsmeow store"):
        take_sqlite(other, None, work)
    text = tmp_path / "text.db"
    text.write_text("hello, not a database" * 100)
    with pytest.raises(BadSource, match="not a readable SQLite store"):
        take_sqlite(text, None, work)
    with pytest.raises(BadSource, match="no such file"):
        take_sqlite(tmp_path / "missing.db", None, work)


def test_a_killed_adoptions_store_is_a_leftover(tmp_path: Path) -> None:
    for name in ("store.db.adopting-99999999", "store.db.adopting-99999999-wal", "store.db"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / f"store.db.adopting-{os.getpid()}").write_bytes(b"")  # still running: kept
    assert [p.name for p in stale_temporaries(tmp_path)] == [
        "store.db.adopting-99999999",
        "store.db.adopting-99999999-wal",
    ]
