"""Size history, the summary (Sentry event, Telegram through a local recording server) and the
``wapool cleanup`` command line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import run_cli
from tests.sentry_capture import CapturingTransport, sentry_events  # noqa: F401
from tests.test_mirror import add_companies
from wapool.backoff import Backoff
from wapool.cleanup import sizes
from wapool.cleanup.service import CleanupService
from wapool.cleanup.telegram import TelegramNotifier
from wapool.db.pool import Database
from wapool.settings import Settings

pytestmark = pytest.mark.timeout(60)
TOKEN = "123456:ABC-secret-token"


class BotApi(ThreadingHTTPServer):
    """Records every request; answers the first ``failures`` with HTTP 502."""

    def __init__(self, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures = failures
        self.requests: list[tuple[str, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: BotApi

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        ok = len(self.server.requests) > self.server.failures
        reply = json.dumps({"ok": ok}).encode()
        self.send_response(200 if ok else 502)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def bot_api(request: pytest.FixtureRequest) -> Iterator[BotApi]:
    server = BotApi(getattr(request, "param", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _notifier(api: BotApi, attempts: int = 3) -> tuple[TelegramNotifier, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    backoff = Backoff(base=1.0, cap=8.0, rand=lambda: 1.0)
    notifier = TelegramNotifier(api.url, TOKEN, "-1001", attempts=attempts, backoff=backoff, sleep=sleep)  # fmt: skip
    return notifier, waits


@pytest.mark.parametrize("bot_api", [2], indirect=True)
async def test_telegram_retries_with_backoff(bot_api: BotApi) -> None:
    notifier, waits = _notifier(bot_api)
    assert await notifier.send("hello")
    assert [p for p, _ in bot_api.requests] == [f"/bot{TOKEN}/sendMessage"] * 3
    assert bot_api.requests[-1][1] == {"chat_id": "-1001", "text": "hello"}
    assert waits == [1.0, 2.0]


@pytest.mark.parametrize("bot_api", [99], indirect=True)
async def test_failed_send_never_fails_the_cleanup(
    bot_api: BotApi,
    db: Database,
    settings: Settings,
    database_url: str,
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    _seed(database_url)
    notifier, _ = _notifier(bot_api)
    result = await CleanupService(db, settings, notifier=notifier).run()
    assert result is not None
    assert result.status == "done"
    assert result.rows == 50
    assert len(bot_api.requests) == 3  # tried, gave up, run still done
    text = bot_api.requests[0][1]["text"]
    assert "50 rows" in text
    assert "whatsmeow_message_secrets: 50" in text
    (event,) = sentry_events.messages("cleanup_finished")
    assert event["level"] == "info"
    assert event["extra"]["deleted_rows"] == 50
    assert event["extra"]["per_table"] == [
        ["c1", "whatsmeow_message_secrets", 50, 250]
    ]  # 5-byte images
    assert TOKEN not in json.dumps(sentry_events.events)


async def test_failure_is_a_sentry_error(
    db: Database,
    settings: Settings,
    database_url: str,
    sentry_events: CapturingTransport,  # noqa: F811
) -> None:
    _seed(database_url)
    with psycopg.connect(database_url) as conn:  # make the deletes fail
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE DELETE ON store_rows FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    result = await CleanupService(db, settings).run()
    assert result is not None
    assert result.status == "failed"
    (event,) = sentry_events.messages("cleanup_failed")
    assert event["level"] == "error"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT status FROM cleanup_runs").fetchall() == [("failed",)]


async def test_size_history_growth_and_metrics(db: Database, database_url: str) -> None:
    _seed(database_url)
    today = datetime.now(UTC).date()
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO store_size_history (sampled_on, company_id, tbl, rows, bytes) "
            "VALUES (%s, 'c1', 'whatsmeow_message_secrets', 20, 100)",
            (today - timedelta(days=7),),
        )
    (row,) = await sizes.sample(db, today)
    assert (row.rows, row.week_ago_rows, row.week_ago_bytes) == (60, 20, 100)
    assert row.bytes > 100
    await sizes.sample(db, today)  # a second sample the same day replaces the first
    assert len(await sizes.growth(db, today)) == 1
    text = sizes.metrics_text([row])
    assert 'wapool_store_rows{company="c1",table="whatsmeow_message_secrets"} 60' in text
    assert await sizes.growth(db, date(2000, 1, 1)) == []


def test_cli_dry_run_prints_the_plan_and_changes_nothing(database_url: str, tmp_path: Path) -> None:
    _seed(database_url)
    env = {"WAPOOL_DATABASE_URL": database_url, "WAPOOL_STATE_DIR": str(tmp_path)}
    before = _rows(database_url)
    dry = run_cli("cleanup", "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "c1" in dry.stdout
    assert "whatsmeow_message_secrets" in dry.stdout
    assert " 50 " in dry.stdout
    assert _rows(database_url) == before
    other = run_cli("cleanup", "--dry-run", "--company", "nobody", env=env, cwd=tmp_path)
    assert other.returncode == 0
    assert "c1" not in other.stdout
    real = run_cli("cleanup", "--company", "c1", env=env, cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    assert "cleanup done: 50 rows" in real.stdout
    assert len(_rows(database_url)) == len(before) - 50


def _seed(url: str) -> None:
    """Company c1, no working store here: 50 expired and 10 fresh message secrets."""
    add_companies(url, "c1")
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO store_copies (company_id, store_uuid, schema_version, "
            "schema_fingerprint, schema_ddl) VALUES ('c1', gen_random_uuid(), 1, 'f', '')"
        )
        conn.execute(
            "INSERT INTO store_rows SELECT 'c1', 'whatsmeow_message_secrets', '[\"i' || n || '\"]', "
            "'[\"x\"]', now() - CASE WHEN n <= 50 THEN interval '40 days' ELSE interval '0' END "
            "FROM generate_series(1, 60) n"
        )


def _rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT * FROM store_rows ORDER BY pk").fetchall()
