"""``wapool pair COMPANY [--phone NUMBER]``: pair a company's WhatsApp through the daemon.

Shows the QR codes as they rotate (in the terminal) or the pair code to type on the phone, and
reports success only when the new device's credentials are in PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC
from typing import Any

from wapool.cli.database import open_database
from wapool.errors import WapoolError
from wapool.registry.pairing import PairingRepository, SessionReport, validate_phone
from wapool.settings import Settings
from wapool.supervisor.session import State

_HEALTHY = frozenset({State.STARTING, State.PAIRING, State.CONNECTED})


def register(commands: Any) -> None:
    parser = commands.add_parser("pair", help="pair a company's WhatsApp (QR, or --phone)")
    parser.add_argument("company_id", metavar="COMPANY")
    parser.add_argument("--phone", help="pair with a code typed on this phone number instead")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")
    parser.set_defaults(handler=_pair)


def show_qr(code: str) -> None:
    if sys.stdout.isatty():
        import segno

        print("\nScan with WhatsApp > Linked devices > Link a device:")
        segno.make(code, error="l").terminal(compact=True)
    else:
        print(f"qr: {code}", flush=True)


async def _pair(settings: Settings, args: argparse.Namespace) -> int:
    phone = validate_phone(args.phone) if args.phone else None
    async with open_database(settings) as db:
        repo = PairingRepository(db)
        await repo.request(args.company_id, phone)
        print(f"pairing {args.company_id}: waiting for the daemon that drives it...", flush=True)
        deadline = time.monotonic() + args.timeout
        shown: str | None = None
        failure: SessionReport | None = None  # the latest error seen while waiting
        while time.monotonic() < deadline:
            request = await repo.get(args.company_id)
            if request is None:
                raise WapoolError("the pairing request disappeared (company removed?)")
            if request.code and request.code != shown:
                shown = request.code
                _show_code(request.code_kind, request.code)
            elif shown is None:  # no code yet: say why, as soon as the daemon tells
                failure = _report_failure(await repo.session(args.company_id), failure)
            if request.error:
                raise WapoolError(f"pairing failed: {request.error}")
            if request.paired_jid:
                return await _store_credentials(
                    repo, request.company_id, request.paired_jid, deadline
                )
            await asyncio.sleep(0.3)
        raise WapoolError(
            f"no pairing within {args.timeout:.0f} s: "
            + why_no_code(args.company_id, await repo.session(args.company_id), failure)
        )


def _show_code(kind: str | None, code: str) -> None:
    if kind == "qr":
        show_qr(code)
    else:
        print(f"pair code: {code} (WhatsApp > Linked devices > Link with phone number)", flush=True)


async def _store_credentials(
    repo: PairingRepository, company: str, jid: str, deadline: float
) -> int:
    """Succeed only once the new device is in PostgreSQL: a restart must never lose it."""
    print(f"paired as {jid}; storing its credentials...", flush=True)
    while not await repo.device_mirrored(company, jid):
        if time.monotonic() > deadline:
            raise WapoolError("paired, but the credentials are not in PostgreSQL yet")
        await asyncio.sleep(0.2)
    print(f"done: {company} is paired and its credentials are in PostgreSQL")
    return 0


def _failing(session: SessionReport | None) -> bool:
    """Is the recorded error why the session has no code? (``last_error`` outlives recoveries.)"""
    return session is not None and bool(session.last_error) and session.state not in _HEALTHY


def _report_failure(
    session: SessionReport | None, previous: SessionReport | None
) -> SessionReport | None:
    """Print the session's error when it changes; returns the latest failing report."""
    if session is None or not _failing(session):
        return previous
    shown = previous and (previous.state, previous.last_error)
    if shown != (session.state, session.last_error):
        print(f"  {session.state} ({session.holder}): {session.last_error}", flush=True)
    return session


def why_no_code(
    company: str, session: SessionReport | None, failure: SessionReport | None = None
) -> str:
    """The daemon's own account of the company, or what to check when there is none.

    A session between two connect attempts is ``starting``: the error seen while waiting
    (``failure``) still says why no code came.
    """
    if session is None:
        return f"no daemon has reported on {company}: is `wapool run` running?"
    since = session.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = f"the daemon {session.holder} last reported {company} {session.state} since {since}"
    failure = session if _failing(session) else failure
    if failure is not None:
        text += f"; last error: {failure.last_error}"
    return text
