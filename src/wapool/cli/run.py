"""``wapool run``: the daemon in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

from wapool.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser("run", help="run the daemon in the foreground")
    parser.set_defaults(handler=_run)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from wapool.daemon import run_daemon
    from wapool.observability.sentry import init_sentry

    init_sentry(settings)  # a no-op without WAPOOL_SENTRY_DSN
    return await run_daemon(settings)
