"""The ``wapool export`` file: writing it, and checking all of it before an import trusts it.

The file is a valid whatsmeow SQLite store (rollback journal, not WAL, so it is one file) whose
``wapool_meta`` table also records the company, the row count and a digest of every row, in
total and per table. A file that fails a check is a *damaged export*, and the message says
where: the SQLite page, the schema entry or the table (tables' own digests tell which one
changed; files written before they existed can only say that some row did). Nothing of
SQLite's or wapool's internal SQL reaches the operator.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import tempfile
import time
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from wapool import __version__
from wapool.crypto import sealed_file
from wapool.errors import WapoolError
from wapool.store import devices, pg_copy, restore
from wapool.store.dump import table_rows
from wapool.store.leftovers import remove_file_set
from wapool.store.schema import StoreSchema, read_schema
from wapool.store.working_store import get_meta, set_meta, transaction

EXPORT_FORMAT = "1"
Rows = list[tuple[str, str, str]]


class BadExportFile(WapoolError):
    """The file is not a wapool export, is truncated, or fails its integrity check."""


@dataclass(frozen=True)
class ExportFile:
    company_id: str
    rows: Rows
    digest: str
    schema_ddl: str
    schema_version: int
    schema_fingerprint: str


def write_export(
    target: Path,
    company_id: str,
    meta: pg_copy.CopyMeta,
    rows: Rows,
    passphrase: bytes | None = None,
) -> None:
    """Write the export through a hidden temporary file, removed whatever happens (it holds
    private keys); sealed with ``passphrase`` unless it is None (``--plaintext``)."""
    if target.is_dir():
        raise WapoolError(f"{target} is a directory; give the export a file name")
    if target.exists():
        raise WapoolError(f"{target} already exists; choose a new file name")
    temp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        _write_export(temp, company_id, meta, rows)
        if passphrase is not None:
            sealed = sealed_file.seal(temp.read_bytes(), passphrase)
            remove_file_set(temp)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(sealed)
                out.flush()
                os.fsync(out.fileno())
        os.replace(temp, target)
    finally:
        remove_file_set(temp)


def _write_export(temp: Path, company_id: str, meta: pg_copy.CopyMeta, rows: Rows) -> None:
    temp.unlink(missing_ok=True)
    restore.build_from_rows(temp, meta, rows)
    with closing(sqlite3.connect(temp, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        with transaction(conn):
            for key, value in {
                "export_format": EXPORT_FORMAT,
                "export_company": company_id,
                "export_rows": str(len(rows)),
                "export_digest": pg_copy.digest(rows),
                "export_table_digests": json.dumps(_table_digests(rows), sort_keys=True),
                "export_created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "export_wapool_version": __version__,
                "export_applied_seq": str(meta.applied_seq),
            }.items():
                set_meta(conn, key, value)


def read_export(source: Path, passphrase: sealed_file.Passphrase | None = None) -> ExportFile:
    """Open and fully check an export file; raise ``BadExportFile`` saying what and where.
    A sealed file is opened with ``passphrase()`` into a private temporary directory first."""
    _check_regular_file(source)
    if sealed_file.is_sealed(source):
        if passphrase is None:
            raise BadExportFile(f"{source}: is encrypted: give its passphrase")
        plain = sealed_file.open_sealed(source.read_bytes(), passphrase(), source)
        with tempfile.TemporaryDirectory(prefix="wapool-import-") as private:
            copy = Path(private) / "export.db"
            copy.write_bytes(plain)
            try:
                return read_export(copy)
            except BadExportFile as exc:  # name the operator's file, not the copy
                raise BadExportFile(str(exc).replace(str(copy), str(source))) from None
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise BadExportFile(f"{source}: cannot open it ({exc})") from None
    with closing(conn):
        try:
            return _read(conn, source)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise BadExportFile(f"{source}: {_damage(exc)}") from None


def _check_regular_file(source: Path) -> None:
    try:
        mode = source.stat().st_mode
    except FileNotFoundError:
        raise BadExportFile(f"{source}: no such file") from None
    except OSError as exc:
        raise BadExportFile(f"{source}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a directory" if stat.S_ISDIR(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a pipe" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file"
        )  # fmt: skip
        raise BadExportFile(f"{source}: is {kind}, not an export file")


def _read(conn: sqlite3.Connection, source: Path) -> ExportFile:
    problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise BadExportFile(f"{source}: damaged export: {_first_problem(problems)}")
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'wapool_meta'"
    ).fetchone()
    if not has_meta or get_meta(conn, "export_format") != EXPORT_FORMAT:
        raise BadExportFile(f"{source}: not a wapool export (format {EXPORT_FORMAT})")
    schema = read_schema(conn)
    if not any(t.name == devices.DEVICE_TABLE for t in schema.tables):
        raise BadExportFile(f"{source}: holds no whatsmeow store")
    rows = _rows(conn, schema, source)
    digest = get_meta(conn, "export_digest") or ""
    if str(len(rows)) != get_meta(conn, "export_rows") or pg_copy.digest(rows) != digest:
        raise BadExportFile(f"{source}: damaged export: {_where_rows_differ(conn, rows)}")
    return ExportFile(
        get_meta(conn, "export_company") or "", rows, digest,
        pg_copy.DDL_SEPARATOR.join(schema.ddl), schema.version, schema.fingerprint,
    )  # fmt: skip


def _rows(conn: sqlite3.Connection, schema: StoreSchema, source: Path) -> Rows:
    rows: Rows = []
    with transaction(conn):
        for table in schema.tables:
            try:
                rows.extend((table.name, key, image) for key, image in table_rows(conn, table))
            except sqlite3.DatabaseError as exc:
                reason = (
                    "a text value is not UTF-8" if "decode" in str(exc) else "its pages are damaged"
                )
                raise BadExportFile(
                    f"{source}: damaged export: table {table.name} is unreadable ({reason})"
                ) from None
    return rows


def _table_digests(rows: Rows) -> dict[str, list[int | str]]:
    by_table: dict[str, Rows] = defaultdict(list)
    for row in rows:
        by_table[row[0]].append(row)
    return {name: [len(part), pg_copy.digest(part)] for name, part in by_table.items()}


def _where_rows_differ(conn: sqlite3.Connection, rows: Rows) -> str:
    try:
        expected = json.loads(get_meta(conn, "export_table_digests") or "null")
    except ValueError:
        expected = None
    if not isinstance(expected, dict):
        return "its rows differ from what was exported (row count or digest)"
    found = _table_digests(rows)
    changed = sorted(t for t in expected.keys() | found.keys() if expected.get(t) != found.get(t))
    return "rows differ from what was exported in table " + ", ".join(changed)


def _first_problem(problems: list[str]) -> str:
    """SQLite's first finding, e.g. ``On tree page 49 cell 258: ...``, on one line."""
    lines = [line for text in problems for line in str(text).splitlines()]
    first = next((line for line in lines if not line.startswith("***")), lines[0])
    return f"SQLite finds {first[:120]}"


def _damage(exc: sqlite3.DatabaseError | UnicodeDecodeError) -> str:
    """What a SQLite error while reading the file means, without SQLite's SQL."""
    if isinstance(exc, UnicodeDecodeError):  # SQLite's own message quotes the damaged bytes
        return "damaged export: its schema is unreadable (text that is not UTF-8)"
    text = str(exc)
    if text.startswith("malformed database schema ("):
        entry = text.split("(", 1)[1].split(")", 1)[0]
        return f"damaged export: the schema entry {entry!a} is unreadable"
    if "decode" in text:
        return "damaged export: its schema is unreadable (text that is not UTF-8)"
    if text.startswith("file is not a database"):
        return "not a wapool export (not an SQLite file)"
    return f"damaged export: SQLite cannot read it ({text.split(':', 1)[0][:80]})"
