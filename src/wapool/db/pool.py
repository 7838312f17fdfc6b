"""The one PostgreSQL pool, and ``Database``: every query bounded, every failure classified.

Defaults are chosen so that the first query after an outage is served within about a second of
the server's return, and a blackholed link fails fast instead of hanging (figures in
docs/postgresql.md):

* a short ``reconnect_timeout`` makes the pool give up a failing reconnection attempt quickly and
  free its slot; with ``max_size > min_size`` the next request then starts a fresh attempt with
  no accumulated backoff (psycopg_pool's own backoff doubles up to the reconnect timeout);
* ``connect_timeout``, the pool ``timeout`` and a bounded ``check`` cap every wait;
* ``tcp_user_timeout`` and keepalives detect a dead peer on an idle or busy socket;
* a server-side ``statement_timeout`` and a client-side deadline (``bounded``) cap every query.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from wapool.crypto import keyring
from wapool.crypto.envelope import RowCipher
from wapool.db import diagnosis
from wapool.db.bounded import bounded
from wapool.db.health import DatabaseHealth
from wapool.errors import DatabaseUnavailable
from wapool.observability.redact import describe_error
from wapool.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = AsyncConnection[Any]

#: Errors that mean "PostgreSQL is not there or not answering", as opposed to a bad query.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    PoolTimeout,
    TimeoutError,
    OSError,
)


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """libpq parameters for every pooled connection."""
    statement_ms = int(settings.db_query_timeout_seconds * 1000)
    return {
        "connect_timeout": settings.db_connect_timeout_seconds,
        "tcp_user_timeout": settings.db_tcp_user_timeout_ms,
        "keepalives": 1,
        "keepalives_idle": settings.db_keepalives_idle_seconds,
        "keepalives_interval": settings.db_keepalives_interval_seconds,
        "keepalives_count": settings.db_keepalives_count,
        "application_name": "wapool",
        # synchronous_commit=on: the mirror trims its local log once PostgreSQL acknowledges a
        # commit, so that acknowledgement must mean durable, whatever the server default.
        "options": f"-c statement_timeout={statement_ms} "
        f"-c idle_in_transaction_session_timeout={statement_ms * 2} "
        "-c synchronous_commit=on",
    }


def build_pool(
    settings: Settings, health: DatabaseHealth, *, min_size: int | None = None
) -> AsyncConnectionPool[Conn]:
    """The pool wapool uses, not yet open (``await pool.open()``)."""
    check_timeout = float(settings.db_connect_timeout_seconds)

    sweeping: set[asyncio.Task[None]] = set()

    async def check(conn: Conn) -> None:
        try:
            await bounded(
                AsyncConnectionPool.check_connection(conn), check_timeout, "connection check"
            )
        except Exception:
            # One broken idle connection usually means all of them are (server restart, cut
            # link). psycopg_pool would try them one by one with a growing delay between
            # tries; sweep them all at once instead so the next try gets a fresh connection.
            if not sweeping and pool_ref:
                task = asyncio.create_task(pool_ref[0].check(), name="pool-sweep")
                sweeping.add(task)
                task.add_done_callback(sweeping.discard)
            raise

    async def reconnect_failed(pool: AsyncConnectionPool[Conn]) -> None:
        health.mark_down(f"reconnection to PostgreSQL failed for {pool.reconnect_timeout:g} s")

    pool_ref: list[AsyncConnectionPool[Conn]] = []
    min_conns = settings.db_pool_min_size if min_size is None else min_size
    pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
        settings.require_database_url(),
        kwargs=connection_kwargs(settings),
        min_size=min_conns,
        max_size=max(settings.db_pool_max_size, min_conns + 1),
        timeout=settings.db_pool_timeout_seconds,
        reconnect_timeout=settings.db_reconnect_timeout_seconds,
        max_lifetime=settings.db_max_lifetime_seconds,
        max_idle=settings.db_max_idle_seconds,
        check=check,
        reconnect_failed=reconnect_failed,
        open=False,
        name="wapool",
    )
    pool_ref.append(pool)
    return pool


class Database:
    """Bounded access to PostgreSQL through the pool, feeding ``DatabaseHealth``."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Conn],
        health: DatabaseHealth,
        query_timeout: float,
        conninfo: str = "",
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.pool = pool
        self.health = health
        self.query_timeout = query_timeout
        self._conninfo = conninfo
        self._connect_kwargs = connect_kwargs or {}
        #: Seals the row images written and opens those read (see ``crypto.envelope``).
        self.cipher = RowCipher(None)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        health: DatabaseHealth | None = None,
        *,
        min_size: int | None = None,
        load_keys: bool = True,
    ) -> Database:
        health = health or DatabaseHealth()
        pool = build_pool(settings, health, min_size=min_size)
        # The whole call: waiting for a connection, then the work, then the commit.
        budget = settings.db_pool_timeout_seconds + settings.db_query_timeout_seconds
        db = cls(pool, health, budget, settings.require_database_url(), connection_kwargs(settings))
        if load_keys:  # ConfigError naming the credential when it is unusable
            db.cipher = RowCipher(keyring.load(settings.master_key_file))
        return db

    async def open(self, *, wait: bool = False) -> None:
        try:
            await self.pool.open(wait=wait, timeout=self.query_timeout)
        except UNAVAILABLE_ERRORS as exc:
            self.health.mark_down(exc)
            raise DatabaseUnavailable(f"PostgreSQL unreachable: {describe_error(exc)}") from None

    async def probe(self, timeout: float) -> None:
        """Connect once outside the pool, to report the real reason PostgreSQL is unreachable.

        Raises ``DatabaseUnavailable``, or ``AccessDenied`` / ``ConfigError`` when waiting
        cannot help (see ``diagnosis``)."""
        try:
            conn = await bounded(
                AsyncConnection.connect(self._conninfo, **self._connect_kwargs),
                timeout,
                "connect",
            )
        except (psycopg.Error, PoolTimeout, TimeoutError, OSError) as exc:
            self.health.mark_down(exc)
            raise diagnosis.connect_failure(exc) from None
        await conn.close()

    async def close(self) -> None:
        await self.pool.close(timeout=2.0)

    async def run(self, work: Callable[[Conn], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run ``work`` in one transaction on a pooled connection, within the deadline.

        Raises ``DatabaseUnavailable`` when PostgreSQL cannot be reached or does not answer in
        time, ``AccessDenied`` when the role lacks a grant; other database errors (constraint
        violations, ...) pass through unchanged.
        """

        async def in_transaction() -> T:
            async with self.pool.connection() as conn:
                try:
                    async with conn.transaction():
                        return await work(conn)
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise diagnosis.privilege_failure(exc, conn.info.user) from None

        try:
            result = await bounded(in_transaction(), timeout or self.query_timeout, "query")
        except UNAVAILABLE_ERRORS as exc:
            if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
                raise
            self.health.mark_down(exc)
            raise DatabaseUnavailable(f"PostgreSQL unavailable: {describe_error(exc)}") from None
        self.health.mark_up()
        return result

    async def fetch(self, sql: LiteralString, params: Any = None) -> list[tuple[Any, ...]]:
        async def work(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []

        return await self.run(work)

    async def execute(self, sql: LiteralString, params: Any = None) -> int:
        async def work(conn: Conn) -> int:
            cur = await conn.execute(sql, params)
            return cur.rowcount

        return await self.run(work)
