"""Fast cold start: a new working store is a copy of a template neonize made once per whatsmeow
schema version. The copies are accepted by whatsmeow itself (the real neonize client, up to its
connection attempt); a damaged template is detected and made again, never copied; templates are
keyed by the schema version and the library; stores are provisioned in parallel, within the limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import mirror_once
from tests.test_mirror import add_companies, writer_for
from wapool.db.pool import Database
from wapool.store import template
from wapool.store.capture import installed_triggers
from wapool.store.keeper import StoreKeeper
from wapool.store.mirror import Mirror
from wapool.store.provision import Provisioned, provision
from wapool.store.schema import read_schema
from wapool.store.template import TEMPLATE_DIR, new_store, template_for
from wapool.store.working_store import connect, get_meta, quick_check, store_path
from wapool.whatsapp.neonize_store import create_schema

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def fresh_templates() -> Iterator[None]:
    """Each test looks at its template files afresh (the process keeps checked ones)."""
    template.forget_loaded()
    yield
    template.forget_loaded()


class Neonize:
    """Makes schemas as neonize did once (copies of the session's neonize-made store), counting
    the calls; ``version`` pretends another whatsmeow schema version."""

    def __init__(self, made_by_neonize: Path, version: int | None = None) -> None:
        self.source = made_by_neonize
        self.version = version
        self.calls: list[Path] = []

    def __call__(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.calls.append(path)
            if not path.exists():
                shutil.copyfile(self.source, path)
            if self.version is not None:
                with closing(sqlite3.connect(path, isolation_level=None)) as conn:
                    conn.execute("UPDATE whatsmeow_version SET version = ?", (self.version,))


def _templates(state: Path) -> list[str]:
    return sorted(p.name for p in (state / TEMPLATE_DIR).iterdir())


def test_the_template_is_made_once_and_every_store_is_a_copy_with_capture(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    neonize = Neonize(whatsmeow_template)
    made = template_for(tmp_path, neonize, library="lib1")
    again = template_for(tmp_path, neonize, library="lib1")
    template.forget_loaded()  # a new process: the file is checked, not made again
    reloaded = template_for(tmp_path, neonize, library="lib1")
    assert len(neonize.calls) == 1
    assert made == again == reloaded
    assert made.path.name == "whatsmeow-v15-lib1.db"
    assert _templates(tmp_path) == ["whatsmeow-v15-lib1.db", "whatsmeow-v15-lib1.db.json"]
    assert oct(made.path.stat().st_mode & 0o777) == "0o600"

    identities = set()
    for company in ("a1", "b2"):
        path = tmp_path / company / "store.db"
        path.parent.mkdir()
        new_store(path, made)
        quick_check(path)
        with closing(connect(path)) as conn:
            assert read_schema(conn).fingerprint == made.fingerprint
            assert installed_triggers(conn)
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            identities.add(get_meta(conn, "store_uuid"))
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert sorted(p.name for p in path.parent.iterdir() if "restoring" in p.name) == []
    assert len(identities) == 2  # each copy is a store of its own


@pytest.mark.parametrize(
    "damage",
    ["truncated", "byte flipped", "sidecar missing", "sidecar garbage", "not sqlite"],
)
def test_a_damaged_template_is_made_again_never_copied(
    whatsmeow_template: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    neonize = Neonize(whatsmeow_template)
    first = template_for(tmp_path, neonize, library="lib1")
    image = first.path.read_bytes()
    sidecar = first.path.with_name(first.path.name + ".json")
    if damage == "truncated":
        first.path.write_bytes(image[: len(image) // 2])
    elif damage == "byte flipped":  # same size, still a header SQLite accepts
        middle = len(image) // 2
        first.path.write_bytes(image[:middle] + bytes([image[middle] ^ 0xFF]) + image[middle + 1 :])
    elif damage == "sidecar missing":
        sidecar.unlink()
    elif damage == "sidecar garbage":
        sidecar.write_text("{not json")
    else:
        first.path.write_bytes(b"garbage" * 1000)
    template.forget_loaded()

    with caplog.at_level(logging.WARNING, logger="wapool.store.template"):
        rebuilt = template_for(tmp_path, neonize, library="lib1")
    assert len(neonize.calls) == 2
    assert [r.message for r in caplog.records] == ["store_template_invalid"]
    assert rebuilt.fingerprint == first.fingerprint
    assert rebuilt.path.read_bytes() == rebuilt.image
    template.forget_loaded()
    assert template_for(tmp_path, neonize, library="lib1") == rebuilt  # sound again
    assert len(neonize.calls) == 2
    path = tmp_path / "c1" / "store.db"
    path.parent.mkdir()
    new_store(path, rebuilt)
    quick_check(path)
    with closing(connect(path)) as conn:
        assert read_schema(conn).fingerprint == first.fingerprint


def test_templates_are_keyed_by_schema_version_and_library(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    v15 = template_for(tmp_path, Neonize(whatsmeow_template), library="old")
    newer = Neonize(whatsmeow_template, version=16)
    v16 = template_for(tmp_path, newer, library="new")  # a neonize upgrade
    assert (v15.schema_version, v16.schema_version) == (15, 16)
    assert v15.fingerprint != v16.fingerprint
    assert _templates(tmp_path) == ["whatsmeow-v16-new.db", "whatsmeow-v16-new.db.json"]

    # A template whose name claims another version than its content is not trusted.
    template.forget_loaded()
    lying = tmp_path / TEMPLATE_DIR / "whatsmeow-v17-new.db"
    v16.path.rename(lying)
    v16.path.with_name(v16.path.name + ".json").rename(lying.with_name(lying.name + ".json"))
    again = template_for(tmp_path, newer, library="new")
    assert again.path.name == "whatsmeow-v16-new.db"
    assert len(newer.calls) == 2
    assert _templates(tmp_path) == ["whatsmeow-v16-new.db", "whatsmeow-v16-new.db.json"]


async def test_a_kept_store_at_the_templates_schema_needs_no_neonize(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    add_companies(database_url, "962302")
    neonize = Neonize(whatsmeow_template)
    created = await provision(db, tmp_path, "962302", make_schema=neonize)
    assert created.action == "created"
    await mirror_once(db, "962302", created.path)
    kept = await provision(db, tmp_path, "962302", make_schema=neonize)
    assert kept.action == "kept"
    assert neonize.calls == [neonize.calls[0]]  # the template only
    assert neonize.calls[0].parent.name == TEMPLATE_DIR

    # A store at an older schema (made by an older neonize) is upgraded by neonize.
    with closing(connect(created.path)) as conn:
        conn.execute("UPDATE whatsmeow_version SET version = 14")
    await provision(db, tmp_path, "962302", make_schema=neonize)
    assert neonize.calls[1:] == [created.path]


@pytest.mark.process  # neonize makes the template; the real neonize client opens the copies
async def test_whatsmeow_accepts_the_copies(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    add_companies(database_url, "fresh", "paired")
    fresh = await provision(db, tmp_path, "fresh")
    paired = await provision(db, tmp_path, "paired")
    assert (fresh.action, paired.action) == ("created", "created")
    assert len(list((tmp_path / TEMPLATE_DIR).glob("whatsmeow-v*.db"))) == 1
    writer = writer_for(paired.path, 3)  # a device, as pairing writes it
    writer.conn.close()
    assert create_schema([fresh.path]) == {fresh.path: []}
    assert create_schema([paired.path])[paired.path] == [
        writer.jid.replace(".0:", ":")  # whatsmeow drops the agent
    ]

    script = textwrap.dedent(
        """
        import sys
        from neonize.client import NewClient
        client = NewClient(sys.argv[1], uuid="wapool-template-test")
        try:
            client.connect()
        except Exception as exc:
            print("connect failed:", exc)
        """
    )
    for store in (fresh.path, paired.path):
        result = subprocess.run(
            [sys.executable, "-c", script, str(store)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "connect failed:" in result.stdout, (result.stdout, result.stderr)
        # whatsmeow got as far as the network: it loaded the store and dialled WhatsApp.
        assert "web.whatsapp.com" in result.stdout, result.stdout
        for word in ("database", "sqlite", "no such table", "upgrade"):
            assert word not in result.stdout.lower(), result.stdout


class CountingKeeper(StoreKeeper):
    """The real keeper, watched: how many provisionings run at once."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.running = 0
        self.most = 0

    async def _run(self, company_id: str) -> Provisioned:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.05)  # long enough for every slot to fill
            return await super()._run(company_id)
        finally:
            self.running -= 1


async def test_stores_are_provisioned_in_parallel_within_the_limit(
    db: Database, database_url: str, whatsmeow_template: Path, tmp_path: Path
) -> None:
    companies = [f"p{n:02d}" for n in range(12)]
    add_companies(database_url, *companies)
    # The template as neonize made it for this library: no child process in this test.
    template_for(tmp_path, Neonize(whatsmeow_template))
    mirror = Mirror(db)
    keeper = CountingKeeper(db, tmp_path, mirror, None, parallel=3)
    await keeper.reconcile(companies)
    assert keeper.most == 3
    assert keeper.ready == frozenset(companies)
    assert keeper.failing == {}
    for company in companies:
        with closing(connect(store_path(tmp_path, company))) as conn:
            assert installed_triggers(conn)
    assert await mirror.drain(30)
    mirror.close()


def test_the_template_metadata_names_what_it_checks(
    whatsmeow_template: Path, tmp_path: Path
) -> None:
    made = template_for(tmp_path, Neonize(whatsmeow_template), library="lib1")
    meta = json.loads(made.path.with_name(made.path.name + ".json").read_text())
    assert meta["schema_version"] == 15
    assert meta["fingerprint"] == made.fingerprint
    assert meta["library"] == "lib1"
    assert len(meta["sha256"]) == 64
