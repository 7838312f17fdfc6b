"""PostgreSQL refusing wapool's role, or a connection string that cannot work: one line naming
the cause and an exit code systemd does not restart on (77 refused, 78 configuration)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import run_cli
from wapool.db.diagnosis import connect_failure, missing_grant
from wapool.devdb import Cluster
from wapool.errors import AccessDenied, ConfigError, DatabaseUnavailable, ExitCode

pytestmark = pytest.mark.timeout(90)
_roles = itertools.count()


@pytest.fixture
def weak_role_url(database_url: str, running_cluster: Cluster) -> Iterator[str]:
    """A role that may log in and nothing else (no grant on wapool's tables or schema)."""
    role = f"weak_{os.getpid()}_{next(_roles)}"
    with psycopg.connect(running_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    dbname = database_url.rsplit("/", 1)[1]
    yield f"postgresql://{role}@127.0.0.1:{running_cluster.port}/{dbname}"
    with psycopg.connect(running_cluster.url("postgres"), autocommit=True) as conn:
        for backend in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,)
        ).fetchall():
            conn.execute("SELECT pg_terminate_backend(%s)", backend)
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _env(url: str, state: Path) -> dict[str, str]:
    return {"WAPOOL_DATABASE_URL": url, "WAPOOL_STATE_DIR": str(state)}


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("command", "denied"),
    [
        (("company", "list"), "permission denied for table companies"),
        (("migrate",), "permission denied for schema public"),
        (("run",), "permission denied for table wapool_migrations"),
    ],
)
def test_role_without_privileges_exits_77_naming_the_grant(
    weak_role_url: str, tmp_path: Path, command: tuple[str, ...], denied: str
) -> None:
    began = time.monotonic()
    result = run_cli(*command, env=_env(weak_role_url, tmp_path), cwd=tmp_path, timeout=30)
    assert result.returncode == ExitCode.NO_PERMISSION, result.stderr
    role = weak_role_url.split("//", 1)[1].split("@", 1)[0]
    line = _last_line(result.stderr)
    assert line.startswith(f'wapool: error: PostgreSQL role "{role}" lacks a privilege: {denied}')
    assert "missing grant: GRANT " in line
    assert f'TO "{role}"' in line
    assert "internal error" not in result.stderr
    assert "Traceback" not in result.stderr
    if command == ("run",):
        assert time.monotonic() - began < 20
        assert result.stderr.count("wapool: error:") == 1


def test_role_that_does_not_exist_is_named_instead_of_waited_for(
    database_url: str, running_cluster: Cluster, tmp_path: Path
) -> None:
    dbname = database_url.rsplit("/", 1)[1]
    url = f"postgresql://ghost_{os.getpid()}@127.0.0.1:{running_cluster.port}/{dbname}"
    env = _env(url, tmp_path)
    for command in (("company", "list"), ("run",)):
        began = time.monotonic()
        result = run_cli(*command, env=env, cwd=tmp_path, timeout=30)
        assert result.returncode == ExitCode.NO_PERMISSION, result.stderr
        assert _last_line(result.stderr).startswith(
            f'wapool: error: PostgreSQL has no role "ghost_{os.getpid()}": create it'
        )
        assert "event=waiting_for_database" not in result.stderr
        assert time.monotonic() - began < 20


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        ("?port=99999", "WAPOOL_DATABASE_URL: its port must be a number from 1 to 65535"),
        ("?sslmode=bogus", "WAPOOL_DATABASE_URL: its sslmode must be one of disable, allow"),
    ],
)
def test_url_that_parses_but_cannot_work_is_a_configuration_error(
    database_url: str, tmp_path: Path, suffix: str, expected: str
) -> None:
    for command in (("company", "list"), ("run",)):
        result = run_cli(*command, env=_env(database_url + suffix, tmp_path), cwd=tmp_path)
        assert result.returncode == ExitCode.CONFIG, result.stderr
        assert result.stderr.strip().startswith(f"wapool: bad configuration: {expected}")
        assert "bogus" not in result.stderr
        assert "99999" not in result.stderr


def test_database_that_does_not_exist_is_a_configuration_error(
    running_cluster: Cluster, tmp_path: Path
) -> None:
    url = running_cluster.url(f"nowhere_{os.getpid()}")
    result = run_cli("company", "list", env=_env(url, tmp_path), cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert result.stderr.strip() == (
        f'wapool: bad configuration: WAPOOL_DATABASE_URL: names database "nowhere_{os.getpid()}", '
        "which does not exist on the server"
    )


@pytest.mark.parametrize(
    ("message", "kind", "text"),
    [
        ('connection is bad: invalid sslcertmode value: "x-secret"', ConfigError,
         "WAPOOL_DATABASE_URL: libpq rejects it: invalid sslcertmode value"),
        ('invalid integer value "x-secret" for connection option "keepalives"', ConfigError,
         'libpq rejects it: invalid integer value for connection option "keepalives"'),
        ('connection failed: connection to server at "h", port 5432 failed: FATAL:  role '
         '"w" is not permitted to log in', AccessDenied, 'ALTER ROLE "w" LOGIN'),
        ('connection failed: connection to server at "h", port 5432 failed: FATAL:  password '
         'authentication failed for user "w"', AccessDenied, 'refused the password of role "w"'),
        ("connection failed: connection to server at \"h\", port 5432 failed: Connection "
         "refused", DatabaseUnavailable, "PostgreSQL unreachable: OperationalError"),
    ],
)  # fmt: skip
def test_connect_failures_are_classified(message: str, kind: type[Exception], text: str) -> None:
    error = connect_failure(psycopg.OperationalError(message))
    assert isinstance(error, kind)
    assert text in str(error)
    assert "x-secret" not in str(error)


def test_missing_grant_names_the_statement() -> None:
    assert missing_grant("permission denied for sequence s_id_seq", "w") == (
        'missing grant: GRANT USAGE, SELECT, UPDATE ON SEQUENCE s_id_seq TO "w"'
    )
    assert missing_grant("must be owner of table companies", "w") == (
        'missing ownership: ALTER TABLE companies OWNER TO "w"'
    )


def test_exit_codes_are_distinct() -> None:
    assert len({int(code) for code in ExitCode}) == len(ExitCode)
    assert ExitCode.NO_PERMISSION == 77  # sysexits EX_NOPERM, listed in the unit
