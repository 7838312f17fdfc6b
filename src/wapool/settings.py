"""Settings from the environment and ``.env`` (prefix ``WAPOOL_``), validated up front.

``load_settings`` turns every validation problem into one line that names the setting and says
what is expected; values are never echoed, so a secret cannot leak through an error.

One module on purpose: every setting, its default and its check in one place is what an
operator (and docs/configuration.md's test) reads.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wapool.errors import ConfigError
from wapool.setting_sources import UNKNOWN, env_file_problems, unknown_variables

ENV_PREFIX = "WAPOOL_"
PositiveFloat = Annotated[float, Field(gt=0)]
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class Settings(BaseSettings):
    """Every setting wapool reads; see ``.env.example`` and docs/configuration.md for each one."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
    )

    database_url: SecretStr | None = None
    database_password: SecretStr | None = None
    state_dir: Path = Path("/var/lib/wapool")
    whatsapp_backend: Literal["neonize", "simulated"] = "neonize"
    #: Encryption at rest (docs/encryption.md): the master key's file (the key itself never
    #: comes from a setting); the systemd credential wapool-master-key takes precedence.
    master_key_file: Path | None = None
    #: Refuse to run (exit 78) without a master key even while the database holds no
    #: encrypted row yet; once it does, a key is required anyway.
    encryption_required: bool = False
    #: How often a running daemon looks for a rotated master key (its key file replaced, or
    #: data keys in PostgreSQL wrapped by a key it lacks) and reloads its keyring.
    master_key_check_seconds: PositiveFloat = 10.0

    cache_ttl_seconds: PositiveFloat = 300.0
    cache_sweep_seconds: PositiveFloat = 60.0
    cache_max_entries: int = Field(10_000, ge=1)
    snapshot_cache_mb: int = Field(256, ge=1)
    key_retention_days: int = Field(30, ge=1)
    cleanup_cron: str = "0 3 * * *"
    # --- expired-key cleanup (issue 5) ---
    cleanup_table_days: str = ""
    cleanup_misfire_grace_seconds: int = Field(3600, ge=1)
    cleanup_batch_rows: int = Field(5000, ge=1, le=100_000)
    cleanup_concurrency: int = Field(2, ge=1, le=16)
    companies_per_worker: int = Field(50, ge=1, le=1000)
    max_concurrent_connects: int = Field(8, ge=1, le=1000)
    lease_seconds: float = Field(30.0, ge=3)
    balance_slack: int = Field(2, ge=0, le=10_000)
    handoff_batch: int = Field(2, ge=1, le=1000)
    node_name: str | None = None
    #: Started without PostgreSQL: resume the leases held from the state directory (issue 13).
    partition_policy: Literal["auto", "resume", "wait"] = "auto"
    #: Pre-key ids a restored store skips beyond the highest one PostgreSQL ever saw.
    prekey_restore_gap: int = Field(2000, ge=0, le=1_000_000)
    worker_heartbeat_timeout_seconds: PositiveFloat = 10.0
    simulated_churn_per_second: float = Field(1.0, ge=0)
    simulated_pairing: Literal["instant", "qr"] = "instant"
    #: Socket of the simulated WhatsApp server shared by the daemons on this machine (tests,
    #: staging); unset: each simulated client works alone.
    simulated_server: Path | None = None
    #: Extra seconds each working store takes to prepare, one at a time (slow bring-up drills).
    simulated_store_delay_seconds: float = Field(0.0, ge=0, le=60)
    #: Simulated backend: inbound messages per second per company (0: none but scripted ones).
    simulated_inbound_per_second: float = Field(0.0, ge=0, le=1000)
    http_addr: str = "127.0.0.1:8787"

    # --- inbound messaging (issue 10; docs/messaging.md) ---
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    #: Seconds after which an event the receiver never accepted becomes a dead letter.
    webhook_max_age: float = Field(86_400.0, gt=0)
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=300)
    webhook_max_in_flight: int = Field(64, ge=1, le=10_000)
    webhook_retry_base_seconds: float = Field(0.5, gt=0)
    webhook_retry_cap_seconds: float = Field(60.0, gt=0)
    #: Hours an inbox keeps events every consumer has passed (``wapool messages`` during an
    #: outage, investigations) before the daemon deletes them.
    inbox_keep_hours: float = Field(24.0, ge=0)

    db_pool_min_size: int = Field(2, ge=1)
    db_pool_max_size: int = Field(6, ge=2)
    db_connect_timeout_seconds: int = Field(2, ge=1, le=60)
    db_pool_timeout_seconds: PositiveFloat = 2.0
    db_reconnect_timeout_seconds: PositiveFloat = 2.0
    db_query_timeout_seconds: PositiveFloat = 5.0
    db_tcp_user_timeout_ms: int = Field(5_000, ge=0)
    db_keepalives_idle_seconds: int = Field(10, ge=1)
    db_keepalives_interval_seconds: int = Field(3, ge=1)
    db_keepalives_count: int = Field(3, ge=1)
    db_max_lifetime_seconds: PositiveFloat = 3600.0
    db_max_idle_seconds: PositiveFloat = 600.0

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    sentry_dsn: SecretStr | None = None
    sentry_environment: str = "production"
    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str | None = None
    telegram_api_url: str = "https://api.telegram.org"

    # --- outbound messaging: the /v1 API, pacing (issue 10; docs/messaging.md) ---
    #: Bearer tokens of the /v1 API, comma-separated; unset: the /v1 routes are off.
    api_tokens: SecretStr | None = None
    api_max_body_mb: float = Field(16.0, gt=0, le=64)
    send_per_minute: float = Field(20.0, gt=0, le=6000)
    send_burst: int = Field(5, ge=1, le=1000)
    send_global_per_second: float = Field(20.0, gt=0, le=10_000)
    send_result_timeout_seconds: float = Field(120.0, ge=1, le=3600)

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_conninfo(value.get_secret_value())
        return value

    @field_validator("state_dir")
    @classmethod
    def _state_dir_usable(cls, value: Path) -> Path:
        path = value.expanduser().absolute()
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise ValueError(f"must be a directory; {probe} is not one")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"must be a directory wapool can write; {probe} is not writable")
        return path

    @field_validator("cleanup_cron")
    @classmethod
    def _cron_parses(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError:
            raise ValueError(
                "must be a five-field crontab expression like '0 3 * * *' (minute hour "
                "day month weekday, UTC)"
            ) from None
        return value

    @field_validator("cleanup_table_days")
    @classmethod
    def _cleanup_tables_known(cls, value: str) -> str:
        from wapool.cleanup.policy import parse_overrides

        parse_overrides(value)
        return value

    @field_validator("http_addr")
    @classmethod
    def _http_addr_well_formed(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("api_tokens")
    @classmethod
    def _api_tokens_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            tokens = value.get_secret_value().split(",")
            if any(len(t.strip()) < 16 or any(c.isspace() for c in t.strip()) for t in tokens):
                raise ValueError(
                    "each comma-separated token must be at least 16 characters without spaces "
                    "(e.g. from `openssl rand -hex 32`)"
                )
        return value

    def api_token_list(self) -> list[bytes]:
        """The /v1 API's bearer tokens (none: the API is off)."""
        if self.api_tokens is None:
            return []
        return [t.strip().encode() for t in self.api_tokens.get_secret_value().split(",")]

    @field_validator("telegram_api_url")
    @classmethod
    def _telegram_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// base URL")
        return value.rstrip("/")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+[^\s]*$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _webhook_signed(self) -> Settings:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError(
                "WAPOOL_WEBHOOK_SECRET: required with WAPOOL_WEBHOOK_URL (every delivery is "
                "signed with it); for example the output of: openssl rand -hex 32"
            )
        return self

    @model_validator(mode="after")
    def _pool_sizes(self) -> Settings:
        if self.db_pool_max_size <= self.db_pool_min_size:
            raise ValueError(
                "WAPOOL_DB_POOL_MAX_SIZE must be greater than WAPOOL_DB_POOL_MIN_SIZE "
                "(the spare room is how the pool reconnects quickly after an outage)"
            )
        return self

    def require_database_url(self) -> str:
        """The libpq connection string, with ``WAPOOL_DATABASE_PASSWORD`` applied."""
        if self.database_url is None:
            raise ConfigError(
                [
                    "WAPOOL_DATABASE_URL: required; expected a PostgreSQL URL such as "
                    "postgresql://wapool@db.example:5432/wapool"
                ]
            )
        from psycopg.conninfo import make_conninfo

        url = self.database_url.get_secret_value()
        if self.database_password is not None:
            return make_conninfo(url, password=self.database_password.get_secret_value())
        return url

    @property
    def lease_holder(self) -> str:
        """This daemon's name in the leases: ``WAPOOL_NODE_NAME``, else this host and state
        directory, so a daemon restarted here resumes its own leases at once.

        Two daemons never share a state directory (``wapool run`` locks it), so the name is unique.
        """
        return self.node_name or f"{socket.gethostname()}:{self.state_dir}"

    def safe_database_target(self) -> str:
        """Where the database is, for logs: host, port and database name, never the password."""
        if self.database_url is None:
            return "unset"
        parts = parse_conninfo(self.database_url.get_secret_value())
        host = parts.get("host") or parts.get("hostaddr") or "local socket"
        return (
            f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or parts.get('user') or ''}"
        )


#: libpq options whose value is one of a fixed set (libpq refuses anything else at connect).
_CONNINFO_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any", "read-write", "read-only", "primary", "standby", "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),
}  # fmt: skip


def parse_conninfo(value: str) -> dict[str, Any]:
    """The connection string's options; ValueError (without the value) when it cannot work."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if value.startswith(("postgres://", "postgresql://")) or "=" in value:
        try:
            parts = conninfo_to_dict(value)
        except ProgrammingError:
            pass
        else:
            _check_conninfo_values(parts)
            return parts
    raise ValueError(
        "must be a PostgreSQL URL such as postgresql://wapool@db.example:5432/wapool "
        "(or a libpq key=value string)"
    )


def _check_conninfo_values(parts: dict[str, Any]) -> None:
    """Values that parse but cannot work are configuration errors, not an unreachable server."""
    for port in str(parts.get("port") or "").split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError("its port must be a number from 1 to 65535")
    for option, allowed in _CONNINFO_CHOICES.items():
        if option in parts and str(parts[option]) not in allowed:
            raise ValueError(f"its {option} must be one of {', '.join(allowed)}")


def split_host_port(value: str) -> tuple[str, int]:
    """Parse ``host:port`` (``[v6]:port`` for IPv6); raise ValueError with the expected form."""
    expected = "must be HOST:PORT, e.g. 127.0.0.1:8787 or [::1]:8787, with a port from 0 to 65535"
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", value)
    if not match:
        raise ValueError(expected)
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(expected)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if match.group(1) or not _HOSTNAME.match(host):
            raise ValueError(expected) from None
    return host, port


def load_settings(
    env_file: str | Path | None = ".env", *, env_file_required: bool = False, **overrides: Any
) -> Settings:
    """Read and validate settings, or raise ``ConfigError`` with one line per bad setting.

    ``env_file_required``: the file was named by the operator (``--env-file``), so its absence
    is an error; the default ``.env`` is optional. See ``setting_sources`` for the checks."""
    unreadable = env_file_problems(env_file, required=env_file_required)
    if unreadable:
        raise ConfigError(unreadable)
    known = [ENV_PREFIX + name for name in Settings.model_fields]
    problems = unknown_variables(os.environ, ENV_PREFIX, known)
    try:
        settings = Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        # A name misspelt in both sources is reported once.
        raise ConfigError(list(dict.fromkeys(problems + _describe(exc)))) from None
    if problems:
        raise ConfigError(problems)
    return settings


def _describe(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = UNKNOWN
        elif error["type"] == "missing":
            message = "required"
        field = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        if field:
            name = field.upper()
            lines.append(f"{name if name.startswith(ENV_PREFIX) else ENV_PREFIX + name}: {message}")
        else:
            lines.append(message)
    return lines
