"""``wapool`` entry point: parse arguments, load settings, run a command, map errors to exits.

Every failure ends as one line on stderr and a documented exit code; no traceback reaches the
operator for an expected error, and no secret reaches the screen.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from wapool import __version__
from wapool.errors import ConfigError, ExitCode, WapoolError
from wapool.observability.logs import configure_logging
from wapool.observability.redact import describe_error
from wapool.settings import Settings, load_settings

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    from wapool.cli import (
        adopt,
        cleanup,
        company,
        database,
        doctor,
        keys,
        messages,
        nodes,
        pair,
        run,
        send,
        status,
        store,
    )  # fmt: skip

    parser = argparse.ArgumentParser(
        prog="wapool", description="Keeps one WhatsApp client per company connected."
    )
    parser.add_argument("--version", action="version", version=f"wapool {__version__}")
    parser.add_argument(
        "--env-file",
        help="settings file read besides the environment (default: ./.env when it exists)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(commands)
    database.register(commands)
    company.register(commands)
    store.register(commands)
    adopt.register(commands)
    cleanup.register(commands)
    pair.register(commands)
    send.register(commands)
    status.register(commands)
    messages.register(commands)
    doctor.register(commands)
    nodes.register(commands)
    keys.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            args.env_file or ".env", env_file_required=args.env_file is not None
        )
    except ConfigError as exc:
        for line in exc.problems:
            print(f"wapool: bad configuration: {line}", file=sys.stderr)
        return ExitCode.CONFIG
    # One-shot commands speak through their output and exit code; only the daemon logs events.
    configure_logging(settings.log_level if args.command == "run" else "ERROR")
    handler: Command = args.handler
    try:
        return asyncio.run(handler(settings, args))
    except ConfigError as exc:
        for line in exc.problems:
            print(f"wapool: bad configuration: {line}", file=sys.stderr)
        return ExitCode.CONFIG
    except WapoolError as exc:
        print(f"wapool: error: {describe_error(exc).split(': ', 1)[-1]}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: say so in one line, keep the traceback for DEBUG
        logging.getLogger("wapool").debug("internal_error", exc_info=True)
        print(
            f"wapool: internal error: {describe_error(exc)} "
            "(run with WAPOOL_LOG_LEVEL=DEBUG for the traceback)",
            file=sys.stderr,
        )
        return ExitCode.FAILURE


if __name__ == "__main__":
    sys.exit(main())
