"""What adoption takes from a source: one device's rows, in whatsmeow's column names."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from wapool.errors import WapoolError
from wapool.store.codec import SQLiteValue

DEVICE_TABLE = "whatsmeow_device"
#: The whatsmeow schema version this wapool's neonize writes; newer sources cannot be adopted.
CURRENT_VERSION = 15
#: The column naming the device in each table (tables without one are shared: ``lid_map``).
DEVICE_COLUMNS = ("jid", "our_jid")

Row = dict[str, SQLiteValue]


class BadSource(WapoolError):
    """The source cannot be read, is not what it claims, or its keys do not verify."""


class AdoptRefused(WapoolError):
    """Adopting would break a rule (a device another company holds, a paired company)."""


@dataclass(frozen=True)
class Taken:
    """One device from a source, ready to become a working store."""

    #: How the operator named the source, without secrets (``sqlite /path``, ``postgres host/db``).
    source: str
    jid: str
    #: Rows per whatsmeow table, as column -> SQLite value.
    tables: Mapping[str, list[Row]]
    #: The source's whatsmeow schema version.
    version: int
    #: The source's own SQLite DDL (SQLite sources): rebuilt as it was, then upgraded by neonize.
    ddl: tuple[str, ...] = ()
    #: What the source holds that adoption leaves out, with a count (Baileys' Signal sessions).
    left_out: Mapping[str, int] = field(default_factory=dict)
    #: Public keys the source records, to check against the private keys (Baileys records them).
    recorded_public: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def device(self) -> Row:
        return self.tables[DEVICE_TABLE][0]

    def counts(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in sorted(self.tables.items())}


def device_column(columns: list[str] | tuple[str, ...]) -> str | None:
    return next((c for c in DEVICE_COLUMNS if c in columns), None)


#: The query every whatsmeow source answers with its schema version.
VERSION_QUERY = "SELECT version FROM whatsmeow_version"


def checked_version(
    tables: Collection[str], read: Callable[[], Sequence[object] | None], where: str, kind: str
) -> int:
    """The source's whatsmeow schema version, once it is known to be a whatsmeow ``kind``.

    ``read`` runs :data:`VERSION_QUERY` and returns its row; it is only called once the tables
    are there, so a foreign database is named as such, not as a failed query.
    """
    if DEVICE_TABLE not in tables or "whatsmeow_version" not in tables:
        raise BadSource(f"{where}: not a whatsmeow {kind} (no {DEVICE_TABLE} table)")
    row = read()
    version = int(str(row[0])) if row else 0
    if version > CURRENT_VERSION:
        raise BadSource(
            f"{where}: whatsmeow schema version {version} is newer than this wapool's "
            f"({CURRENT_VERSION}); upgrade wapool first"
        )
    return version
