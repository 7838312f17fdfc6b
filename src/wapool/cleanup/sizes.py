"""Database size tracking: per company and table, rows and bytes, sampled once a day.

Samples go to ``store_size_history`` (one per day, a later sample the same day replaces it), are
exported as Prometheus gauges and feed the summary's growth since last week.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from wapool.db.pool import Conn, Database
from wapool.errors import DatabaseUnavailable


@dataclass(frozen=True)
class SizeRow:
    company_id: str
    table: str
    rows: int
    bytes: int
    week_ago_rows: int | None = None
    week_ago_bytes: int | None = None


async def sample(db: Database, day: date) -> list[SizeRow]:
    """Count every company's rows and bytes now and record them as ``day``'s sample."""

    async def work(conn: Conn) -> None:
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.execute(
            "INSERT INTO store_size_history (sampled_on, company_id, tbl, rows, bytes) "
            "SELECT %s, company_id, tbl, count(*), sum(octet_length(pk) + octet_length(image)) "
            "FROM store_rows GROUP BY company_id, tbl "
            "ON CONFLICT (sampled_on, company_id, tbl) DO UPDATE SET rows = EXCLUDED.rows, "
            "bytes = EXCLUDED.bytes, sampled_at = now()",
            (day,),
        )
        await conn.execute(
            "DELETE FROM store_size_history h WHERE sampled_on = %s AND NOT EXISTS "
            "(SELECT 1 FROM store_rows r WHERE r.company_id = h.company_id AND r.tbl = h.tbl)",
            (day,),
        )

    await db.run(work, timeout=3600)
    return await growth(db, day)


async def growth(db: Database, day: date) -> list[SizeRow]:
    """``day``'s sample beside the one from a week earlier (None where there was none)."""
    rows = await db.fetch(
        "SELECT h.company_id, h.tbl, h.rows, h.bytes, w.rows, w.bytes "
        "FROM store_size_history h LEFT JOIN store_size_history w ON w.company_id = h.company_id "
        "AND w.tbl = h.tbl AND w.sampled_on = %s WHERE h.sampled_on = %s "
        "ORDER BY h.company_id, h.tbl",
        (day - timedelta(days=7), day),
    )
    return [SizeRow(str(c), str(t), int(r), int(b), w_r, w_b) for c, t, r, b, w_r, w_b in rows]


def metrics_text(sizes: list[SizeRow]) -> str:
    """Prometheus text exposition of the latest sample."""
    lines = [
        "# HELP wapool_store_rows Rows in the PostgreSQL copy, per company and table.",
        "# TYPE wapool_store_rows gauge",
    ]
    lines += [f"wapool_store_rows{_labels(s)} {s.rows}" for s in sizes]
    lines += [
        "# HELP wapool_store_bytes Bytes of keys and images in the PostgreSQL copy.",
        "# TYPE wapool_store_bytes gauge",
    ]
    lines += [f"wapool_store_bytes{_labels(s)} {s.bytes}" for s in sizes]
    return "\n".join(lines) + "\n"


def _labels(size: SizeRow) -> str:
    return f'{{company="{size.company_id}",table="{size.table}"}}'


class LatestSizes:
    """The latest sample, kept for ``/metrics``: loaded at start, refreshed by the daily job."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.rows: list[SizeRow] = []

    async def take(self) -> None:
        """Sample today and keep it (the scheduler's daily job)."""
        self.rows = await sample(self._db, datetime.now(UTC).date())

    async def load(self) -> None:
        """The latest sample already recorded; nothing while PostgreSQL is unavailable."""
        with contextlib.suppress(DatabaseUnavailable):
            rows = await self._db.fetch("SELECT max(sampled_on) FROM store_size_history")
            if rows and rows[0][0] is not None:
                self.rows = await growth(self._db, rows[0][0])
