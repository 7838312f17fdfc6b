"""``wapool company add|list|remove|enable|disable``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from wapool.cli.database import open_database
from wapool.cli.table import render
from wapool.registry.company import Company
from wapool.registry.repository import CompanyRepository
from wapool.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser("company", help="manage the company registry")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="register a company (enabled)")
    add.add_argument("company_id", metavar="COMPANY")
    add.add_argument("--name", default="", help="display name")
    add.add_argument("--restore", action="store_true", help="bring back a removed company")
    add.add_argument(
        "--disabled",
        action="store_true",
        help="register it disabled (no client starts): e.g. to `wapool adopt` it first",
    )
    add.set_defaults(handler=_add)

    listing = actions.add_parser("list", help="list companies")
    listing.add_argument("--all", action="store_true", help="include removed companies")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)

    for name, handler, text in (
        ("remove", _remove, "remove a company (its data is kept until the retention cleanup)"),
        ("enable", _enable, "enable a company"),
        ("disable", _disable, "disable a company (its client is stopped; data kept)"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("company_id", metavar="COMPANY")
        sub.set_defaults(handler=handler)


async def _add(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        company = await CompanyRepository(db).add(
            args.company_id, args.name, restore=args.restore, enabled=not args.disabled
        )
    notes = [n for n, on in (("restored", args.restore), ("disabled", not company.enabled)) if on]
    print(f"added company {company.id}" + (f" ({', '.join(notes)})" if notes else ""))
    return 0


async def _remove(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        company = await CompanyRepository(db).remove(args.company_id)
    print(f"removed company {company.id}")
    return 0


async def _enable(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        company = await CompanyRepository(db).set_enabled(args.company_id, True)
    print(f"enabled company {company.id}")
    return 0


async def _disable(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        company = await CompanyRepository(db).set_enabled(args.company_id, False)
    print(f"disabled company {company.id}")
    return 0


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        companies = await CompanyRepository(db).list(include_removed=args.all)
    if args.json:
        print(json.dumps([_as_json(c) for c in companies], indent=2))
    else:
        print(_table(companies))
    return 0


def _as_json(company: Company) -> dict[str, Any]:
    return {
        "id": company.id,
        "display_name": company.display_name,
        "enabled": company.enabled,
        "paired_jid": company.paired_jid,
        "created_at": company.created_at.isoformat(),
        "updated_at": company.updated_at.isoformat(),
        "removed_at": company.removed_at.isoformat() if company.removed_at else None,
    }


def _table(companies: list[Company]) -> str:
    header = ("COMPANY", "NAME", "STATE", "PAIRED JID", "CREATED")
    rows = [
        (
            c.id,
            c.display_name,
            "removed" if c.removed_at else ("enabled" if c.enabled else "disabled"),
            c.paired_jid or "-",
            f"{c.created_at:%Y-%m-%d %H:%M}",
        )
        for c in companies
    ]
    return render(header, rows, "(no companies)")
