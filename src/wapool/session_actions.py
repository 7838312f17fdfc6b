"""What the daemon does when a session changes state: status, registry, pairing, alerts.

The supervisor reports each transition (in order, one at a time); these actions record it in
``session_states`` for ``wapool status``, publish pairing codes, keep the paired JID in the
registry and raise the alerts an operator must see. PostgreSQL being down skips the records,
never the alerts.
"""

from __future__ import annotations

import contextlib

from wapool.db.pool import Database
from wapool.errors import DatabaseUnavailable
from wapool.observability import alerts
from wapool.registry.pairing import PairingRepository
from wapool.registry.repository import CompanyRepository
from wapool.supervisor.reconciler import OnTransition, Supervisor
from wapool.supervisor.session import State
from wapool.whatsapp import events as ev


async def record_state(
    db: Database, company: str, state: State, event: ev.WhatsAppEvent, holder: str
) -> None:
    error = getattr(event, "reason", None)
    await db.execute(
        "INSERT INTO session_states (company_id, state, since, last_error, holder) "
        "VALUES (%(c)s, %(s)s, now(), %(e)s, %(h)s) ON CONFLICT (company_id) DO UPDATE SET "
        "since = CASE WHEN session_states.state = EXCLUDED.state THEN session_states.since "
        "ELSE now() END, state = EXCLUDED.state, "
        "last_error = coalesce(EXCLUDED.last_error, session_states.last_error), "
        "holder = EXCLUDED.holder, updated_at = now()",
        {"c": company, "s": state.value, "e": error, "h": holder},
    )


def session_actions(
    repository: CompanyRepository, pairing: PairingRepository, db: Database, holder: str
) -> OnTransition:
    """What the daemon does when a session changes state: status, registry, pairing, alerts."""

    async def act(company: str, state: State, event: ev.WhatsAppEvent) -> None:
        with contextlib.suppress(DatabaseUnavailable):
            await record_state(db, company, state, event, holder)
        match event:
            case ev.QrCode(code=code):
                with contextlib.suppress(DatabaseUnavailable):
                    await pairing.publish_code(company, "qr", code)
            case ev.PairCode(code=code):
                with contextlib.suppress(DatabaseUnavailable):
                    await pairing.publish_code(company, "pair_code", code)
            case ev.Paired(jid=jid):
                with contextlib.suppress(DatabaseUnavailable):
                    await repository.set_paired_jid(company, jid)
                    await pairing.finish(company, jid=jid)
            case ev.LoggedOut(reason=reason):
                alerts.session_logged_out(company, reason)
                with contextlib.suppress(DatabaseUnavailable):
                    await repository.set_paired_jid(company, None)
                    await pairing.finish(company, error=f"logged out: {reason}")
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
