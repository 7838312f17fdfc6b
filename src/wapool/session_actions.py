"""What the daemon does when a session changes state: status, registry, pairing, alerts.

The supervisor reports each transition (in order, one at a time); these actions record it in
``session_states`` for ``wapool status``, publish pairing codes, keep the paired JID in the
registry and raise the alerts an operator must see. PostgreSQL being down skips the records,
never the alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial

import psycopg

from wapool.backoff import Backoff
from wapool.db.pool import Conn, Database
from wapool.errors import DatabaseUnavailable
from wapool.observability import alerts
from wapool.registry.pairing import PairingRepository
from wapool.registry.repository import CompanyRepository
from wapool.supervisor.reconciler import OnTransition, Supervisor
from wapool.supervisor.session import State
from wapool.whatsapp import events as ev

log = logging.getLogger(__name__)


_RECORD = (
    "INSERT INTO session_states (company_id, state, since, last_error, holder) "
    "VALUES (%(c)s, %(s)s, now(), %(e)s, %(h)s) ON CONFLICT (company_id) DO UPDATE SET "
    "since = CASE WHEN session_states.state = EXCLUDED.state THEN session_states.since "
    "ELSE now() END, state = EXCLUDED.state, "
    "last_error = coalesce(EXCLUDED.last_error, session_states.last_error), "
    "holder = EXCLUDED.holder, updated_at = now()"
)

Then = Callable[[], Awaitable[object]]


class StateRecorder:
    """Records transitions in ``session_states``, all those waiting in one transaction (in
    order), then runs what each transition does next in PostgreSQL. One round trip per
    transition, one after another, made a cold start of hundreds of companies wait for
    thousands of round trips before ``wapool status`` showed them connected.

    A write PostgreSQL could not take (down, or too slow on a loaded host) is tried again, with
    backoff, holding only each company's latest state: a state is never silently dropped."""

    def __init__(self, db: Database, holder: str, backoff: Backoff | None = None) -> None:
        self._db = db
        self._holder = holder
        self._backoff = backoff or Backoff(base=0.5, cap=30.0)
        self._waiting: list[tuple[dict[str, object], Then | None]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, company: str, state: State, event: ev.WhatsAppEvent, then: Then | None) -> None:
        error = getattr(event, "reason", None)
        params = {"c": company, "s": state.value, "e": error, "h": self._holder}
        self._waiting.append((params, then))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            latest = list({str(params["c"]): params for params, _ in batch}.values())
            failed = False
            try:
                try:
                    await self._db.run(partial(_write, latest))
                    self._backoff.reset()
                except (DatabaseUnavailable, psycopg.errors.QueryCanceled):
                    failed = True
                    self._waiting[:0] = [(params, None) for params in latest]
                for _, then in batch:
                    if then is not None:
                        with contextlib.suppress(DatabaseUnavailable):
                            await then()
            except Exception:
                log.exception("session_state_record_failed")
            if failed:
                await asyncio.sleep(self._backoff.next_delay())


async def _write(rows: list[dict[str, object]], conn: Conn) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(_RECORD, rows)


def session_actions(
    repository: CompanyRepository, pairing: PairingRepository, db: Database, holder: str
) -> OnTransition:
    """What the daemon does when a session changes state: status, registry, pairing, alerts.

    The records in PostgreSQL are written behind (``StateRecorder``, in order); the alerts
    at once."""
    recorder = StateRecorder(db, holder)

    async def act(company: str, state: State, event: ev.WhatsAppEvent) -> None:
        then: Then | None = None
        match event:
            case ev.QrCode(code=code):
                then = partial(pairing.publish_code, company, "qr", code)
            case ev.PairCode(code=code):
                then = partial(pairing.publish_code, company, "pair_code", code)
            case ev.Paired(jid=jid):

                async def paired(jid: str = jid) -> None:
                    await repository.set_paired_jid(company, jid)
                    await pairing.finish(company, jid=jid)

                then = paired
            case ev.LoggedOut(reason=reason):
                alerts.session_logged_out(company, reason)

                async def logged_out(reason: str = reason) -> None:
                    await repository.set_paired_jid(company, None)
                    await pairing.finish(company, error=f"logged out: {reason}")

                then = logged_out
            case ev.StreamReplaced():
                alerts.session_replaced(company)
            case ev.TemporaryBan(code=code, expires_in=seconds):
                alerts.session_banned(company, code, seconds)
            case ev.ClientOutdated():
                alerts.client_outdated(company)
            case ev.StoreFailed(reason=reason, fault=fault):
                alerts.store_failed(company, f"{fault}: {reason}")
            case _:
                pass
        recorder.add(company, state, event, then)

    return act


async def pair_by_phone(pairing: PairingRepository, supervisor: Supervisor) -> None:
    """Pass pending phone-number pairing requests to their clients once they show a QR."""
    try:
        requests = await pairing.open_requests()
    except DatabaseUnavailable:
        return
    for request in requests:
        company = request.company_id
        session = supervisor.sessions.get(company)
        ready = (
            session is not None
            and session.state is State.PAIRING  # connected to WhatsApp, showing QR codes
            and supervisor.pool.worker_of(company) is not None
        )
        if request.phone and not request.phone_sent and ready:
            await supervisor.pool.command(company, "pair_phone", phone=request.phone)
            await pairing.mark_phone_sent(company)
