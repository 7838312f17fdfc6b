"""Change capture: triggers on every whatsmeow table append to ``wapool_changelog``.

The triggers run inside whatsmeow's own transaction, so the log is durable, in commit order,
and never holds half a transaction that was rolled back. Each entry is one changed key:

* ``U`` upsert, with the row's full image;
* ``D`` delete (FK-cascade deletes of a logout fire these too);
* ``R`` recheck: the row *may* have changed in a way no AFTER trigger sees (an
  ``INSERT OR REPLACE`` that removed a row conflicting on a non-key UNIQUE column); the mirror
  reads its current state in the same snapshot.

One more kind is written by wapool itself, not by a trigger: a *purge* (``tbl`` =
``wapool_purge``, see ``store.purge``), one entry for a whole cleanup batch. While the cleanup's
transaction holds a row in ``wapool_purging`` for a table, that table's delete trigger stays
silent: the purge entry describes those deletes to the mirror at once.

Triggers are generated from the live schema and regenerated whenever its fingerprint changes;
after a regeneration every row is queued for a recheck, so nothing written by a schema upgrade
in between is missed.
"""

from __future__ import annotations

import sqlite3
import uuid

from wapool.store.schema import StoreSchema, Table, quote, read_schema
from wapool.store.working_store import get_meta, json_array_sql, set_meta, transaction

TRIGGER_PREFIX = "wapool_capture_"
#: Bumped when the generated triggers change while whatsmeow's schema does not; the triggers are
#: then regenerated (without a recheck: they capture whatsmeow's writes as before).
CAPTURE_VERSION = "2"

CAPTURE_DDL = """
CREATE TABLE IF NOT EXISTS wapool_changelog (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    op  TEXT NOT NULL CHECK (op IN ('U', 'D', 'R')),
    pk  TEXT NOT NULL,
    img TEXT,
    at  REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE IF NOT EXISTS wapool_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS wapool_purging (
    tbl TEXT PRIMARY KEY
);
CREATE INDEX IF NOT EXISTS wapool_changelog_purges ON wapool_changelog (seq)
    WHERE tbl = 'wapool_purge';
"""


def _log(table: Table, op: str, key: str, image: str = "NULL") -> str:
    return (
        "INSERT INTO wapool_changelog (tbl, op, pk, img) "
        f"VALUES ('{table.name}', '{op}', {key}, {image});"
    )


def trigger_sql(table: Table) -> list[str]:
    """The CREATE TRIGGER statements that capture every change to ``table``."""
    name, keys = quote(table.name), table.key_columns
    new_key, old_key = json_array_sql("NEW", keys), json_array_sql("OLD", keys)
    new_image = json_array_sql("NEW", table.columns)
    statements = [
        f"CREATE TRIGGER {TRIGGER_PREFIX}{table.name}_ai AFTER INSERT ON {name} BEGIN "
        f"{_log(table, 'U', new_key, new_image)} END",
        f"CREATE TRIGGER {TRIGGER_PREFIX}{table.name}_au AFTER UPDATE ON {name} BEGIN "
        f"INSERT INTO wapool_changelog (tbl, op, pk) SELECT '{table.name}', 'D', {old_key} "
        f"WHERE {old_key} IS NOT {new_key}; "
        f"{_log(table, 'U', new_key, new_image)} END",
        f"CREATE TRIGGER {TRIGGER_PREFIX}{table.name}_ad AFTER DELETE ON {name} "
        f"WHEN NOT EXISTS (SELECT 1 FROM wapool_purging WHERE tbl = '{table.name}') BEGIN "
        f"{_log(table, 'D', old_key)} END",
    ]
    for n, unique in enumerate(table.unique):
        match = " AND ".join(f"{quote(c)} IS NEW.{quote(c)}" for c in unique)
        recheck = (
            f"INSERT INTO wapool_changelog (tbl, op, pk) "
            f"SELECT '{table.name}', 'R', {json_array_sql(name, keys)} FROM {name} WHERE {match};"
        )
        for event, suffix in (("INSERT", "bi"), ("UPDATE", "bu")):
            statements.append(
                f"CREATE TRIGGER {TRIGGER_PREFIX}{table.name}_{suffix}{n} BEFORE {event} "
                f"ON {name} BEGIN {recheck} END"
            )
    return statements


def installed_triggers(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE ? ESCAPE '\\'",
        (TRIGGER_PREFIX.replace("_", "\\_") + "%",),
    ).fetchall()
    return [r[0] for r in rows]


def drop_capture(conn: sqlite3.Connection) -> None:
    """Remove the triggers (before whatsmeow upgrades its schema); the log stays."""
    with transaction(conn, immediate=True):
        for trigger in installed_triggers(conn):
            conn.execute(f"DROP TRIGGER {quote(trigger)}")


def install_capture(
    conn: sqlite3.Connection, *, store_uuid: str | None = None, recheck: bool = True
) -> bool:
    """Make sure the log, the metadata and up-to-date triggers exist.

    Returns True when the schema fingerprint changed (or capture is new): the triggers are then
    regenerated and, with ``recheck``, every existing row is queued so the mirror republishes
    the whole store. Triggers that were merely dropped are reinstalled without a recheck.
    """
    with transaction(conn, immediate=True):
        for statement in CAPTURE_DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        if get_meta(conn, "store_uuid") is None:
            set_meta(conn, "store_uuid", store_uuid or str(uuid.uuid4()))
        schema = read_schema(conn)
        changed = get_meta(conn, "capture_fingerprint") != schema.fingerprint
        current = get_meta(conn, "capture_version") == CAPTURE_VERSION
        if not changed and current and installed_triggers(conn):
            return False
        for trigger in installed_triggers(conn):
            conn.execute(f"DROP TRIGGER {quote(trigger)}")
        for table in schema.tables:
            for statement in trigger_sql(table):
                conn.execute(statement)
        if changed and recheck:
            _queue_full_recheck(conn, schema)
        set_meta(conn, "capture_fingerprint", schema.fingerprint)
        set_meta(conn, "capture_version", CAPTURE_VERSION)
        return changed


def _queue_full_recheck(conn: sqlite3.Connection, schema: StoreSchema) -> None:
    for table in schema.tables:
        key = json_array_sql(quote(table.name), table.key_columns)
        conn.execute(
            f"INSERT INTO wapool_changelog (tbl, op, pk) "
            f"SELECT '{table.name}', 'R', {key} FROM {quote(table.name)}"
        )
