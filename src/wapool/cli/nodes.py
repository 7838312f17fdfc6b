"""``wapool nodes``, ``wapool drain [NODE]``, ``wapool move COMPANY NODE``: several hosts.

``drain`` marks a node draining (this host's daemon when NODE is left out): it hands every
company over, a batch at a time, and takes none; ``--wait`` returns once it drives none. A
daemon that starts again takes its share again (``--undo`` does so without a restart).
``move`` asks the company's holder to hand it over to NODE (or reserves it for NODE when no
node drives it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict
from typing import Any

from wapool.cli.database import open_database
from wapool.cli.table import render
from wapool.errors import ExitCode, WapoolError
from wapool.nodes import NodeRow, list_nodes, request_move, set_draining
from wapool.registry.repository import CompanyRepository
from wapool.settings import Settings


def register(commands: Any) -> None:
    listing = commands.add_parser("nodes", help="the daemons sharing the companies")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_nodes)

    drain = commands.add_parser("drain", help="hand every company of a node over to the others")
    drain.add_argument("node", metavar="NODE", nargs="?", help="default: this host's daemon")
    drain.add_argument("--wait", action="store_true", help="return once it drives no company")
    drain.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
    drain.add_argument("--undo", action="store_true", help="let the node take its share again")
    drain.set_defaults(handler=_drain)

    move = commands.add_parser("move", help="hand a company over to another node")
    move.add_argument("company_id", metavar="COMPANY")
    move.add_argument("node", metavar="NODE")
    move.set_defaults(handler=_move)


async def _nodes(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        rows = await list_nodes(db, settings.lease_seconds)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return ExitCode.OK
    header = ("NODE", "ADDRESS", "COMPANIES", "HEARTBEAT", "VERSION", "STATE")
    table = [
        (r.name, r.address, str(r.companies), f"{r.heartbeat_age:.1f} s ago", r.version, _state(r))
        for r in rows
    ]
    print(render(header, table, empty="(no node registered)"))
    return ExitCode.OK


async def _drain(settings: Settings, args: argparse.Namespace) -> int:
    node = args.node or settings.lease_holder
    async with open_database(settings) as db:
        await set_draining(db, node, not args.undo)
        if args.undo:
            print(f"{node} takes its share again")
            return ExitCode.OK
        print(f"{node} is draining: it hands its companies over and takes none")
        if not args.wait:
            return ExitCode.OK
        deadline = time.monotonic() + args.timeout
        while (left := _count(await list_nodes(db, settings.lease_seconds), node)) > 0:
            if time.monotonic() >= deadline:
                raise WapoolError(f"{node} still drives {left} companies after {args.timeout:g} s")
            await asyncio.sleep(0.5)
    print(f"{node} drives no company")
    return ExitCode.OK


def _state(row: NodeRow) -> str:
    return "draining" if row.draining else "live" if row.live else "gone"


def _count(rows: list[Any], node: str) -> int:
    return next((r.companies for r in rows if r.name == node), 0)


async def _move(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        await CompanyRepository(db).get(args.company_id)  # unknown: one clear line
        print(await request_move(db, args.company_id, args.node, settings.lease_seconds))
    return ExitCode.OK
