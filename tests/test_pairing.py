"""``wapool pair`` against a running daemon (simulated backend showing rotating QR codes)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.daemon import Daemons, scrubbed_env
from wapool.cli.pair import why_no_code
from wapool.registry.pairing import SessionReport

pytestmark = pytest.mark.timeout(120)


def _env(database_url: str, state: Path) -> dict[str, str]:
    return {
        "WAPOOL_DATABASE_URL": database_url,
        "WAPOOL_STATE_DIR": str(state),
        "WAPOOL_WHATSAPP_BACKEND": "simulated",
        "WAPOOL_SIMULATED_PAIRING": "qr",
    }


@pytest.mark.parametrize("phone", [None, "55 11 99999-9999"])
def test_pair_shows_codes_and_waits_for_durable_credentials(
    database_url: str, tmp_path: Path, phone: str | None, daemons: Daemons
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302')")
    env = _env(database_url, tmp_path / "state")
    args = ["pair", "962302", "--timeout", "60"] + (["--phone", phone] if phone else [])
    # The request is waiting before the daemon starts: the simulated QR codes rotate for a few
    # seconds only, and a loaded machine could otherwise start the command after the "scan".
    pair = subprocess.Popen(
        [sys.executable, "-m", "wapool", *args],
        env=scrubbed_env(env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert pair.stdout is not None
        first = pair.stdout.readline()
        assert first.startswith("pairing 962302: waiting for the daemon"), first
        daemons.start(env)
        rest, errors = pair.communicate(timeout=90)
    finally:
        if pair.poll() is None:
            pair.kill()
    assert pair.returncode == 0, first + rest + errors
    lines = [first.rstrip("\n"), *rest.splitlines()]
    if phone:
        assert any(line.startswith("pair code: SIM") for line in lines), lines
    else:
        assert any(line.startswith("qr: 2@simulated-962302-") for line in lines), lines
    assert lines[-1] == "done: 962302 is paired and its credentials are in PostgreSQL"
    with psycopg.connect(database_url) as conn:
        jid = conn.execute("SELECT paired_jid FROM companies").fetchone()
        device = conn.execute(
            "SELECT count(*) FROM store_rows WHERE tbl = 'whatsmeow_device'"
        ).fetchone()
    assert jid is not None
    assert jid[0] is not None
    assert device == (1,)
    again = run_cli("pair", "962302", env=env, cwd=tmp_path)
    assert again.returncode == 1
    assert "is already paired as" in again.stderr


def test_pair_rejects_bad_input_without_a_daemon(database_url: str, tmp_path: Path) -> None:
    env = _env(database_url, tmp_path / "state")
    unknown = run_cli("pair", "ghost", env=env, cwd=tmp_path)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "wapool: error: unknown company 'ghost'",
    )
    bad_phone = run_cli("pair", "ghost", "--phone", "12ab", env=env, cwd=tmp_path)
    assert bad_phone.returncode == 1
    assert "invalid phone number '12ab'" in bad_phone.stderr


DNS_ERROR = (
    "failed to dial whatsapp servers: dial tcp: lookup web.whatsapp.com on 127.0.0.53:53: "
    "no such host"
)


def test_pair_names_the_error_the_daemon_recorded(database_url: str, tmp_path: Path) -> None:
    """The daemon runs but cannot reach WhatsApp: the command says so, in the daemon's words."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302')")
        conn.execute(
            "INSERT INTO session_states (company_id, state, since, last_error, holder) "
            "VALUES ('962302', 'reconnecting', '2026-11-30 12:00:01+00', %s, 'db1:/var/lib/wapool')",
            (DNS_ERROR,),
        )
    env = _env(database_url, tmp_path / "state")
    result = run_cli("pair", "962302", "--timeout", "1", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"  reconnecting (db1:/var/lib/wapool): {DNS_ERROR}" in result.stdout.splitlines()
    assert result.stderr.strip() == (
        "wapool: error: no pairing within 1 s: the daemon db1:/var/lib/wapool last reported "
        "962302 reconnecting since 2026-11-30 12:00:01 UTC; last error: " + DNS_ERROR
    )


def test_pair_without_any_daemon_or_on_a_disabled_company(
    database_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO companies (id) VALUES ('962302'), ('acme')")
        conn.execute("UPDATE companies SET enabled = false WHERE id = 'acme'")
    env = _env(database_url, tmp_path / "state")
    alone = run_cli("pair", "962302", "--timeout", "1", env=env, cwd=tmp_path)
    assert alone.returncode == 1
    assert "no daemon has reported on 962302: is `wapool run` running?" in alone.stderr
    disabled = run_cli("pair", "acme", "--timeout", "30", env=env, cwd=tmp_path, timeout=20)
    assert (disabled.returncode, disabled.stderr.strip()) == (
        1,
        "wapool: error: company 'acme' is disabled: `wapool company enable acme` first",
    )


def test_the_error_seen_while_waiting_outlives_the_next_attempt() -> None:
    at = datetime(2026, 11, 30, 12, 0, 1, tzinfo=UTC)
    failing = SessionReport("reconnecting", at, DNS_ERROR, "db1", at)
    retrying = SessionReport("starting", at, DNS_ERROR, "db1", at)  # the next connect attempt
    assert why_no_code("962302", retrying, failing).endswith(f"; last error: {DNS_ERROR}")
    # An error older than this wait, on a session that is just starting, is not blamed.
    assert why_no_code("962302", retrying) == (
        "the daemon db1 last reported 962302 starting since 2026-11-30 12:00:01 UTC"
    )
