"""``wapool pair COMPANY [--phone NUMBER]``: pair a company's WhatsApp through the daemon.

Shows the QR codes as they rotate (in the terminal) or the pair code to type on the phone, and
reports success only when the new device's credentials are in PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from wapool.cli.database import open_database
from wapool.errors import WapoolError
from wapool.registry.pairing import PairingRepository, validate_phone
from wapool.settings import Settings


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
        while time.monotonic() < deadline:
            request = await repo.get(args.company_id)
            if request is None:
                raise WapoolError("the pairing request disappeared (company removed?)")
            if request.code and request.code != shown:
                shown = request.code
                if request.code_kind == "qr":
                    show_qr(request.code)
                else:
                    print(
                        f"pair code: {request.code} (WhatsApp > Linked devices > Link with phone number)",
                        flush=True,
                    )
            if request.error:
                raise WapoolError(f"pairing failed: {request.error}")
            if request.paired_jid:
                print(f"paired as {request.paired_jid}; storing its credentials...", flush=True)
                while not await repo.device_mirrored(args.company_id, request.paired_jid):
                    if time.monotonic() > deadline:
                        raise WapoolError("paired, but the credentials are not in PostgreSQL yet")
                    await asyncio.sleep(0.2)
                print(f"done: {args.company_id} is paired and its credentials are in PostgreSQL")
                return 0
            await asyncio.sleep(0.3)
    raise WapoolError(
        f"no pairing within {args.timeout:.0f} s: is `wapool run` running and the company enabled?"
    )
