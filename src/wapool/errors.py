"""One exception tree for wapool, and the exit codes the CLI maps it to.

Driver and library errors are translated into these where they leave an adapter, so callers
never need to know about psycopg or pydantic. No message here ever carries a secret.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; systemd's ``RestartPreventExitStatus=`` relies on them."""

    OK = 0
    FAILURE = 1  # a command failed (bad argument, unknown company, ...)
    USAGE = 2  # command line not understood (argparse's own code)
    SCHEMA_TOO_NEW = 65  # the database was migrated by a newer wapool
    SCHEMA_NOT_MIGRATED = 66  # the database needs `wapool migrate` first
    DATABASE_UNAVAILABLE = 69  # PostgreSQL unreachable when it is required
    NO_PERMISSION = 77  # EX_NOPERM: PostgreSQL refuses the role (missing, or lacks a grant)
    CONFIG = 78  # EX_CONFIG: bad configuration
    INTERRUPTED = 130  # forced stop (second SIGINT)


class WapoolError(Exception):
    """Base of every error wapool raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(WapoolError):
    """Bad configuration: one problem per line, each naming its setting."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class DatabaseUnavailable(WapoolError):
    """PostgreSQL could not be reached or did not answer in time."""

    exit_code = ExitCode.DATABASE_UNAVAILABLE


class AccessDenied(WapoolError):
    """PostgreSQL refuses wapool's role: it does not exist, may not log in, or lacks a grant.

    Retrying cannot help until an administrator acts, so it has its own exit code, which the
    systemd unit lists in ``RestartPreventExitStatus=``."""

    exit_code = ExitCode.NO_PERMISSION


class SchemaTooNew(WapoolError):
    """The database schema was migrated by a newer wapool than this one."""

    exit_code = ExitCode.SCHEMA_TOO_NEW


class SchemaNotMigrated(WapoolError):
    """The database has not been migrated to this wapool's schema yet."""

    exit_code = ExitCode.SCHEMA_NOT_MIGRATED


class InvalidCompanyId(WapoolError):
    """A company id that does not match the allowed shape."""


class InvalidDisplayName(WapoolError):
    """A company display name that is too long or holds control characters."""


class CompanyNotFound(WapoolError):
    """A company id that is not in the registry."""


class CompanyExists(WapoolError):
    """A company id that is already in the registry."""


class MigrationError(WapoolError):
    """A migration failed or an applied migration file was changed afterwards."""
