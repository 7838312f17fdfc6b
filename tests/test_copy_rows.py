"""The mirror's COPY data, built off the event loop in chunks: chunks keep to one step each
and to their size, every change is in exactly one, values are escaped as COPY reads them, and
sealed images open only for their own company, table, key and ``seq``. The purge suite also
runs with chunks of three rows, so a purge falls between chunks of a transaction."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests import test_purge
from tests.conftest import mirror_once, new_store
from tests.test_mirror import add_companies, writer_for
from wapool.crypto import envelope, keyring
from wapool.crypto.envelope import DataKey, RowCipher, open_image
from wapool.db.pool import Database
from wapool.store import copy_rows, pg_copy
from wapool.store.changelog import Change, Prefix
from wapool.store.pg_copy import Batch
from wapool.store.purge import Purge
from wapool.store.schema import StoreSchema
from wapool.store.verify import verify

SCHEMA = StoreSchema((), (), 1)


def _batch(company: str, steps: list[int], purges: int, seq: int = 7) -> Batch:
    changes = [
        Change("whatsmeow_sessions", f'["t{company}-{i}"]', f'["x{i:02X}"]', 1.5 + i, step)
        for i, step in enumerate(steps)
    ]
    purge = Purge("whatsmeow_sender_keys", "", "", datetime.now(UTC), 1)
    prefix = Prefix("uuid", "fp", seq, len(changes), changes, None, (purge,) * purges)
    return Batch(company, prefix, SCHEMA)


@pytest.mark.unit
def test_chunks_keep_to_their_step_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy_rows, "CHUNK_ROWS", 3)
    a = _batch("a", [0, 0, 0, 0, 1, 2, 2], purges=2)
    b = _batch("b", [0, 2, 2, 2], purges=2)
    chunks = copy_rows.chunks([a, b])
    assert [c.step for c in chunks] == [0, 0, 1, 2, 2]
    assert all(sum(end - first for _, first, end in c.parts) <= 3 for c in chunks)
    seen = [
        (batch.company_id, i)
        for chunk in chunks
        for batch, first, end in chunk.parts
        for i in range(first, end)
        if batch.prefix.changes[i].step == chunk.step
    ]
    assert sorted(seen) == [("a", i) for i in range(7)] + [("b", i) for i in range(4)]
    assert copy_rows.chunks([_batch("c", [], purges=1)]) == []


@pytest.mark.unit
def test_values_are_escaped_for_copy_and_images_sealed_to_their_row() -> None:
    odd = 'a\\b\tc\nd\re"'
    change = Change("whatsmeow_contacts", f'["t{odd}"]', f'["t{odd}"]', 1700000000.25, 0)
    gone = Change("whatsmeow_contacts", '["tgone"]', None, 1.0, 0)
    prefix = Prefix("uuid", "fp", 42, 2, [change, gone], None)
    chunk = copy_rows.Chunk(0, ((Batch("c1", prefix, SCHEMA), 0, 2),))

    plain = copy_rows.encode(chunk, None).decode().splitlines()
    escaped = '["ta\\\\b\\tc\\nd\\re""]'  # as COPY's text format spells it
    row = ["c1", "whatsmeow_contacts", escaped, escaped, "1700000000.25", "42", "0"]
    assert plain[0] == "\t".join(row)
    assert plain[1].split("\t")[3] == "\\N"

    dk = DataKey("k1", os.urandom(32))
    sealed = copy_rows.encode(chunk, {"c1": dk}).decode().splitlines()[0].split("\t")[3]
    assert open_image({"k1": dk}, "c1", change.table, change.key, 42, sealed) == change.image
    for company, seq in (("c2", 42), ("c1", 41)):
        with pytest.raises(ValueError, match="does not decrypt"):
            open_image({"k1": dk}, company, change.table, change.key, seq, sealed)
    # Sealing, one company's key missing: an error, never its images in plaintext.
    with pytest.raises(RuntimeError, match="no data key to seal company 'c1'"):
        copy_rows.encode(chunk, {"c2": dk})


@pytest.mark.parametrize("seed", [0, 1])
async def test_purges_converge_with_chunks_of_three_rows(
    seed: int,
    db: Database,
    database_url: str,
    whatsmeow_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(copy_rows, "CHUNK_ROWS", 3)
    await test_purge.test_purges_among_writes_deletes_and_mirror_ticks_converge(
        seed, db, database_url, whatsmeow_template, tmp_path
    )


async def test_rows_are_sealed_and_opened_off_the_event_loop(
    db: Database,
    database_url: str,
    whatsmeow_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14: a tick's sealing (and a restore's opening) must not hold the event loop."""
    loop_thread = threading.get_ident()
    sealed_in: set[int] = set()
    opened_in: set[int] = set()
    real_seal, real_open = envelope.seal, envelope.open_image

    def seal_recorded(*args: Any) -> str:
        sealed_in.add(threading.get_ident())
        return real_seal(*args)

    def open_recorded(*args: Any) -> str:
        opened_in.add(threading.get_ident())
        return real_open(*args)

    monkeypatch.setattr(copy_rows, "seal", seal_recorded)
    monkeypatch.setattr(envelope, "open_image", open_recorded)
    db.cipher = RowCipher(keyring.Keyring((keyring.new_key(),), "test"))
    add_companies(database_url, "offloop")
    path = new_store(whatsmeow_template, tmp_path, "offloop")
    writer_for(path, 3).conn.close()
    await mirror_once(db, "offloop", path)
    rows = await pg_copy.fetch_rows(db, "offloop")

    assert rows
    assert sealed_in
    assert opened_in
    assert loop_thread not in sealed_in | opened_in
    assert (await verify(db, path, "offloop")).equal
