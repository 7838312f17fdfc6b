"""What a PostgreSQL refusal means for the operator, as one line and the right exit code.

psycopg reports a connection that cannot be made as ``OperationalError`` whatever the cause,
and the pool hides even that behind ``PoolTimeout``. An operator needs three different answers:

* the server is not there (yet): ``DatabaseUnavailable`` (69), the daemon waits for it;
* the connection string cannot work at all (``port=99999``, ``sslmode=bogus``, a database
  that does not exist): ``ConfigError`` (78), naming ``WAPOOL_DATABASE_URL``;
* the server refuses the role (it does not exist, may not log in, bad password, no
  ``pg_hba.conf`` entry) or the role lacks a grant: ``AccessDenied`` (77). Only an
  administrator can fix these, so systemd must not restart the daemon every few seconds.

Connection-phase errors carry no SQLSTATE in psycopg, so they are recognised by libpq's and
the server's (English) message texts; anything unrecognised stays "unavailable", as before.
Quoted values are dropped from libpq's option errors: settings values are never echoed.
"""

from __future__ import annotations

import re

from psycopg import errors as pg_errors

from wapool.errors import AccessDenied, ConfigError, DatabaseUnavailable, WapoolError
from wapool.observability.redact import describe_error, redact

URL_SETTING = "WAPOOL_DATABASE_URL"
ROLE_HELP = "see deploy/postgres-role.sql"

_ROLE_REFUSALS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r'role "(?P<x>[^"]+)" does not exist'),
        'PostgreSQL has no role "{x}": create it or fix the user in ' + URL_SETTING,
    ),
    (
        re.compile(r'role "(?P<x>[^"]+)" is not permitted to log in'),
        'PostgreSQL role "{x}" may not log in: ALTER ROLE "{x}" LOGIN',
    ),
    (
        re.compile(r'password authentication failed for user "(?P<x>[^"]+)"'),
        'PostgreSQL refused the password of role "{x}": check ' + URL_SETTING
        + " and WAPOOL_DATABASE_PASSWORD",
    ),
    (
        re.compile(r'permission denied for database "(?P<x>[^"]+)"'),
        'PostgreSQL role may not connect to database "{x}": GRANT CONNECT ON DATABASE "{x}"',
    ),
    (
        re.compile(r"(?P<x>no pg_hba\.conf entry for [^,]+(?:, [^,]+)*)"),
        "PostgreSQL refuses this client: {x}",
    ),
)  # fmt: skip
_NO_DATABASE = re.compile(r'database "(?P<x>[^"]+)" does not exist')
#: libpq's own checks of connection options, made before any network traffic.
_BAD_OPTION = re.compile(r"\binvalid (?:[\w ]+ value|port number|connection option|integer)")


def connect_failure(exc: BaseException) -> WapoolError:
    """The wapool error for a failed attempt to open a connection."""
    text = " ".join(str(exc).split())
    for pattern, template in _ROLE_REFUSALS:
        if match := pattern.search(text):
            return AccessDenied(f"{template.format(x=match['x'])} ({ROLE_HELP})")
    if match := _NO_DATABASE.search(text):
        return ConfigError(
            [f'{URL_SETTING}: names database "{match["x"]}", which does not exist on the server']
        )
    if match := _BAD_OPTION.search(text):
        return ConfigError([f"{URL_SETTING}: libpq rejects it: {_without_values(text, match)}"])
    return DatabaseUnavailable(f"PostgreSQL unreachable: {describe_error(exc)}")


def privilege_failure(exc: pg_errors.InsufficientPrivilege, role: str) -> AccessDenied:
    """A statement refused for lack of a grant: say which grant, to which role."""
    primary = exc.diag.message_primary or str(exc).splitlines()[0]
    return AccessDenied(
        redact(
            f'PostgreSQL role "{role}" lacks a privilege: {primary}; {missing_grant(primary, role)}'
            f" (wapool's role should own its database: {ROLE_HELP})"
        )
    )


def missing_grant(primary: str, role: str) -> str:
    """The statement an administrator runs, from the server's ``permission denied`` text."""
    if match := re.match(r"permission denied for (\w+(?: \w+)?) (\S+)", primary):
        kind, name = match.groups()
        privileges = {
            "schema": "USAGE, CREATE",
            "sequence": "USAGE, SELECT, UPDATE",
            "database": "CONNECT, CREATE",
            "function": "EXECUTE",
        }.get(kind, "SELECT, INSERT, UPDATE, DELETE")
        noun = "TABLE" if kind in ("table", "view", "materialized view") else kind.upper()
        return f'missing grant: GRANT {privileges} ON {noun} {name} TO "{role}"'
    if match := re.match(r"must be owner of (\w+(?: \w+)?) (\S+)", primary):
        kind, name = match.groups()
        return f'missing ownership: ALTER {kind.upper()} {name} OWNER TO "{role}"'
    return "ask the database administrator for the grant"


def _without_values(text: str, match: re.Match[str]) -> str:
    """libpq's message from the match on, its quoted values left out."""
    message = text[match.start() :].split(" connection to server", 1)[0]
    message = re.sub(r'value "[^"]*"', "value", message)
    return re.sub(r':\s*"[^"]*"', "", message).rstrip(" .:")
