"""New working stores are copies of a template neonize made once per whatsmeow schema version.

Creating whatsmeow's schema takes a neonize child process (half a second, seconds on a loaded
host), and installing change capture means parsing some 100 KB of trigger SQL; copying a 300 KB
file takes a millisecond. So neonize makes one *template* per whatsmeow library, wapool installs
its change capture in it (``capture``: triggers, change log, metadata; no store identity), and
it is kept in ``$WAPOOL_STATE_DIR/.templates/`` (a name no company id can take) as
``whatsmeow-v<schema version>-<key>.db``, where ``<key>`` identifies neonize's version, its Go
library (a digest of the file) and wapool's capture version, with a ``.json`` beside it: schema
version, fingerprint and the SHA-256 of the file. Another neonize or capture gets its own
template (the old ones are removed). A template whose file no longer matches its digest
(truncated, damaged), fails ``quick_check``, or whose schema is not the one recorded, is
deleted and made again: it is never copied. Once checked, its bytes are kept in memory for the
life of the process, so each copy is exactly what was checked.

A new store is the template's bytes written beside its final place
(``store.db.restoring-<pid>``, which ``leftovers`` removes if the process dies) and opened once:
``install_capture`` finds its capture current and gives it an identity of its own, the change
log's timestamps become the copy's, ``quick_check``; then it is synced and renamed into place.
A store whose schema has the template's fingerprint needs no neonize upgrade either
(``Template.current``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from wapool.store.capture import CAPTURE_VERSION, install_capture
from wapool.store.faults import SQLITE_ERRORS, Fault, StoreFault
from wapool.store.leftovers import alive
from wapool.store.restore import temporary
from wapool.store.schema import read_schema
from wapool.store.working_store import fsync_path, quick_check, read_only, secure_files
from wapool.whatsapp.neonize_store import SchemaCreationFailed

log = logging.getLogger(__name__)

SchemaMaker = Callable[[Sequence[Path]], object]
TEMPLATE_DIR = ".templates"
_LIBRARY_SUFFIXES = (".so", ".dylib", ".dll")
#: The change log's default for ``at`` (``capture.CAPTURE_DDL``): now, in Unix seconds.
NOW_SQL = "(julianday('now') - 2440587.5) * 86400.0"


@dataclass(frozen=True)
class Template:
    path: Path
    schema_version: int
    fingerprint: str
    #: The checked file's bytes: what every copy is made of.
    image: bytes

    def current(self, conn: sqlite3.Connection) -> bool:
        """Is the store on ``conn`` already at this template's whatsmeow schema?"""
        return read_schema(conn).fingerprint == self.fingerprint


class TemplateInvalid(Exception):
    pass


@cache
def library_key() -> str:
    """neonize's version and a digest of its Go library (what decides whatsmeow's schema), and
    the capture version (what decides the triggers)."""
    spec = importlib.util.find_spec("neonize")
    digest = hashlib.sha256(f"capture {CAPTURE_VERSION}".encode())
    try:
        digest.update(importlib.metadata.version("neonize").encode())
    except importlib.metadata.PackageNotFoundError:
        digest.update(b"no neonize")
    if spec is not None and spec.origin is not None:
        for lib in sorted(Path(spec.origin).parent.iterdir()):
            if lib.suffix in _LIBRARY_SUFFIXES:
                with open(lib, "rb") as file:
                    digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()[:16]


_lock = threading.Lock()
_loaded: dict[tuple[Path, str], Template] = {}


def template_for(state_dir: Path, make_schema: SchemaMaker, library: str | None = None) -> Template:
    """This state directory's template for the installed whatsmeow, checked, made if needed."""
    library = library or library_key()
    key = (state_dir.resolve(), library)
    with _lock:
        found = _loaded.get(key)
        if found is None:
            found = _load_or_build(state_dir / TEMPLATE_DIR, library, make_schema)
            _loaded[key] = found
        return found


def forget_loaded() -> None:
    """Drop the templates checked by this process (tests: look at the files again)."""
    with _lock:
        _loaded.clear()


def new_store(path: Path, template: Template) -> None:
    """Write a fresh working store at ``path`` (which must not exist) from ``template``."""
    with temporary(path) as temp:
        with open(temp, "wb") as out:
            out.write(template.image)
        # One connection, one parse of the triggers: opening a store costs more than copying it.
        with closing(sqlite3.connect(temp, isolation_level=None)) as conn:
            conn.execute("PRAGMA synchronous = OFF")  # synced once, below
            install_capture(conn)  # current already: only the store identity is new
            conn.execute(f"UPDATE wapool_changelog SET at = {NOW_SQL}")
            rows = conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise StoreFault(Fault.CORRUPT, f"{temp}: quick_check of a new copy: {rows[:3]}")
        fsync_path(temp)
        if path.exists():
            raise FileExistsError(f"{path} appeared while a new store was being made")
        os.replace(temp, path)
        fsync_path(path.parent)
        secure_files(path)


def _load_or_build(directory: Path, library: str, make_schema: SchemaMaker) -> Template:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_dead_builds(directory)
    for path in sorted(directory.glob(f"whatsmeow-v*-{library}.db")):
        try:
            return _check(path)
        except TemplateInvalid as exc:
            log.warning("store_template_invalid", extra={"template": path.name, "error": str(exc)})
            _remove(path)
    return _build(directory, library, make_schema)


def _build(directory: Path, library: str, make_schema: SchemaMaker) -> Template:
    temp = directory / f"build-{os.getpid()}-{threading.get_ident()}.db"
    _remove(temp)
    try:
        make_schema([temp])
        with closing(sqlite3.connect(temp, isolation_level=None)) as conn:
            schema = read_schema(conn)
            if schema.version == 0:
                raise SchemaCreationFailed(f"neonize made no whatsmeow schema in {temp.name}")
            install_capture(conn)
            conn.execute("DELETE FROM wapool_meta WHERE key = 'store_uuid'")  # each copy its own
            conn.execute("PRAGMA journal_mode = WAL")  # as working stores are; one file when closed
        image = temp.read_bytes()
        final = directory / f"whatsmeow-v{schema.version}-{library}.db"
        meta = {"schema_version": schema.version, "fingerprint": schema.fingerprint,
                "sha256": hashlib.sha256(image).hexdigest(), "library": library}  # fmt: skip
        _sidecar(final).write_text(json.dumps(meta, indent=1) + "\n")
        os.chmod(temp, 0o600)
        os.replace(temp, final)
    finally:
        _remove(temp)
    for old in directory.glob("whatsmeow-v*.db"):
        if old != final:
            _remove(old)  # another neonize's
    log.info("store_template_created", extra={"template": final.name})
    return Template(final, schema.version, schema.fingerprint, image)


def _check(path: Path) -> Template:
    """The template at ``path``, if it is exactly what was recorded when it was made."""
    try:
        meta = json.loads(_sidecar(path).read_text())
        image = path.read_bytes()
        if hashlib.sha256(image).hexdigest() != meta["sha256"]:
            raise TemplateInvalid("its content no longer matches its digest")
        quick_check(path)
        with closing(read_only(path)) as conn:
            schema = read_schema(conn)
    except (OSError, ValueError, KeyError, TypeError, StoreFault, *SQLITE_ERRORS) as exc:
        raise TemplateInvalid(f"{type(exc).__name__}: {exc}") from None
    name_version = path.name.split("-")[1].removeprefix("v")
    if (schema.version, schema.fingerprint) != (meta["schema_version"], meta["fingerprint"]) or (
        name_version != str(schema.version)
    ):
        raise TemplateInvalid(f"schema version {schema.version} is not the one recorded")
    return Template(path, schema.version, schema.fingerprint, image)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _remove(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm", ".json"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _remove_dead_builds(directory: Path) -> None:
    for path in directory.glob("build-*.db"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            _remove(path)
