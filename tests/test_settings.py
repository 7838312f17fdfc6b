from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from wapool.errors import ConfigError, ExitCode
from wapool.settings import load_settings, split_host_port

SECRET = "s3cr3t-Pa55word-xyz"


def test_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    settings = load_settings(None, state_dir=tmp_path)
    assert settings.cache_ttl_seconds == 300
    assert settings.cache_sweep_seconds == 60
    assert settings.key_retention_days == 30
    assert settings.cleanup_cron == "0 3 * * *"
    assert settings.whatsapp_backend == "neonize"
    assert settings.db_pool_max_size > settings.db_pool_min_size
    assert split_host_port(settings.http_addr) == ("127.0.0.1", 8787)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("cache_ttl_seconds", "0", "greater than 0"),
        ("cache_ttl_seconds", "soon", "valid number"),
        ("cleanup_cron", "61 3 * * *", "crontab"),
        ("cleanup_cron", "every night", "crontab"),
        ("http_addr", "localhost", "HOST:PORT"),
        ("http_addr", "127.0.0.1:70000", "HOST:PORT"),
        ("http_addr", "[::1:80", "HOST:PORT"),
        ("whatsapp_backend", "baileys", "'neonize' or 'simulated'"),
        ("companies_per_worker", "0", "greater than or equal to 1"),
        ("telegram_api_url", "ftp://x", "http"),
    ],
)
def test_each_bad_setting_is_named(tmp_path: Path, name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, state_dir=tmp_path, **{name: value})
    assert len(caught.value.problems) == 1
    line = caught.value.problems[0]
    assert line.startswith(f"WAPOOL_{name.upper()}: ")
    assert expected in line


def test_state_dir_must_be_writable_directory(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as caught:
        load_settings(None, state_dir=a_file / "sub")
    assert caught.value.problems[0].startswith("WAPOOL_STATE_DIR: must be a directory")


def test_pool_max_must_exceed_min(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, state_dir=tmp_path, db_pool_min_size=4, db_pool_max_size=4)
    assert "WAPOOL_DB_POOL_MAX_SIZE must be greater than WAPOOL_DB_POOL_MIN_SIZE" in str(
        caught.value
    )


def test_password_override_is_applied_and_never_shown(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        state_dir=tmp_path,
        database_url="postgresql://wapool@db.example:5433/wapool",
        database_password=SECRET,
    )
    assert f"password={SECRET}" in settings.require_database_url()
    assert SECRET not in repr(settings)
    assert settings.safe_database_target() == "db.example:5433/wapool"


def test_bad_configuration_exits_78_naming_each_setting_without_secrets(tmp_path: Path) -> None:
    env = {
        "WAPOOL_DATABASE_URL": f"not a url {SECRET}",
        "WAPOOL_SENTRY_DSN": SECRET,
        "WAPOOL_CACHE_TTL_SECONDS": "-5",
        "WAPOOL_STATE_DIR": str(tmp_path),
    }
    for command in (["run"], ["migrate"], ["company", "list"]):
        result = run_cli(*command, env=env, cwd=tmp_path)
        assert result.returncode == ExitCode.CONFIG, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == [
            "wapool: bad configuration: WAPOOL_DATABASE_URL: must be a PostgreSQL URL such as "
            "postgresql://wapool@db.example:5432/wapool (or a libpq key=value string)",
            "wapool: bad configuration: WAPOOL_CACHE_TTL_SECONDS: Input should be greater than 0",
        ]
        assert SECRET not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_env_file_is_read_and_typos_are_reported(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"WAPOOL_DATABASE_URL=postgresql://u:{SECRET}@127.0.0.1:1/x\nWAPOOL_CACHE_TTL=5\n"
    )
    result = run_cli("company", "list", env={"WAPOOL_STATE_DIR": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.strip() == (
        "wapool: bad configuration: WAPOOL_CACHE_TTL: unknown setting "
        "(check the spelling against .env.example)"
    )
    assert SECRET not in result.stderr


def test_missing_database_url_is_a_configuration_error(tmp_path: Path) -> None:
    result = run_cli("company", "list", env={"WAPOOL_STATE_DIR": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.startswith("wapool: bad configuration: WAPOOL_DATABASE_URL: required")


def test_unreachable_database_is_one_line_without_password(tmp_path: Path) -> None:
    env = {
        "WAPOOL_DATABASE_URL": f"postgresql://wapool:{SECRET}@127.0.0.1:1/wapool",
        "WAPOOL_STATE_DIR": str(tmp_path),
    }
    result = run_cli("company", "list", env=env, cwd=tmp_path)
    assert result.returncode == ExitCode.DATABASE_UNAVAILABLE
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("wapool: error: PostgreSQL unreachable")
    assert SECRET not in result.stderr


def test_env_file_that_is_not_utf8_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(
        b"# settings\nWAPOOL_LOG_LEVEL=INFO\nWAPOOL_NODE_NAME=caf\xe9-\xff\n"
    )
    result = run_cli("company", "list", env={"WAPOOL_STATE_DIR": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert result.stderr.strip() == (
        f"wapool: bad configuration: {tmp_path / '.env'} line 3: not UTF-8 text; "
        "save the file as UTF-8"
    )


def test_env_file_named_on_the_command_line_must_exist(tmp_path: Path) -> None:
    env = {"WAPOOL_STATE_DIR": str(tmp_path)}
    missing = tmp_path / "missing.env"
    result = run_cli("--env-file", str(missing), "company", "list", env=env, cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert result.stderr.strip() == f"wapool: bad configuration: --env-file {missing}: no such file"
    directory = run_cli("--env-file", str(tmp_path), "company", "list", env=env, cwd=tmp_path)
    assert directory.returncode == ExitCode.CONFIG
    assert "not a regular file" in directory.stderr
    # The default ./.env stays optional: without it the next problem is the missing URL.
    default = run_cli("company", "list", env=env, cwd=tmp_path)
    assert default.stderr.startswith("wapool: bad configuration: WAPOOL_DATABASE_URL: required")


def test_unknown_variable_is_refused_in_the_environment_as_in_env_file(tmp_path: Path) -> None:
    typo = "wapool: bad configuration: WAPOOL_KEY_RETENTION_DAY: unknown setting"
    env = {"WAPOOL_STATE_DIR": str(tmp_path), "WAPOOL_KEY_RETENTION_DAY": "90"}
    from_env = run_cli("company", "list", env=env, cwd=tmp_path)
    (tmp_path / ".env").write_text("WAPOOL_KEY_RETENTION_DAY=90\n")
    from_file = run_cli("company", "list", env={"WAPOOL_STATE_DIR": str(tmp_path)}, cwd=tmp_path)
    both = run_cli("company", "list", env=env, cwd=tmp_path)
    for result in (from_env, from_file, both):
        assert result.returncode == ExitCode.CONFIG, result.stderr
        assert result.stderr.splitlines()[0].startswith(typo)
        assert result.stderr.count("WAPOOL_KEY_RETENTION_DAY") == 1
        assert "90" not in result.stderr


def test_variables_of_wapools_own_tools_are_not_settings(tmp_path: Path) -> None:
    env = {"WAPOOL_STATE_DIR": str(tmp_path), "WAPOOL_DEVDB_DIR": str(tmp_path)}
    result = run_cli("company", "list", env=env, cwd=tmp_path)
    assert result.stderr.startswith("wapool: bad configuration: WAPOOL_DATABASE_URL: required")
