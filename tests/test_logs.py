"""The journal line format: an error line always says what went wrong (issue 12, defect 4)."""

from __future__ import annotations

import io
import logging
import sqlite3

from wapool.observability.logs import LogfmtFormatter


def _line(record_args: dict[str, object], exc: BaseException | None = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(journal=False, with_time=False))
    log = logging.getLogger("wapool.test_logs")
    log.handlers[:] = [handler]
    log.propagate = False
    try:
        if exc is None:
            log.error("thing_failed", extra=record_args)
        else:
            try:
                raise exc
            except BaseException:
                log.exception("thing_failed", extra=record_args)
    finally:
        log.handlers.clear()
    return stream.getvalue().strip()


def test_an_exception_line_carries_the_message_not_only_the_type() -> None:
    line = _line({"company": "acme"}, sqlite3.OperationalError("database or disk is full"))
    assert 'error="OperationalError: database or disk is full"' in line
    assert line.count("error=") == 1


def test_an_exception_without_a_message_still_names_itself() -> None:
    assert "error=TimeoutError" in _line({}, TimeoutError())


def test_an_empty_error_field_is_filled_from_the_exception() -> None:
    line = _line({"error": ""}, OSError(28, "No space left on device"))
    assert 'error="OSError: [Errno 28] No space left on device"' in line


def test_an_explicit_error_field_is_kept() -> None:
    line = _line({"error": "store unreadable"}, ValueError("inner"))
    assert 'error="store unreadable"' in line
    assert "inner" not in line


def test_secrets_are_scrubbed_from_messages_and_fields() -> None:
    exc = RuntimeError("connect to postgresql://wapool:hunter2@db/wapool failed")
    line = _line({"dsn": "password=hunter2 host=db"}, exc)
    assert "hunter2" not in line
    assert "postgresql://wapool:***@db/wapool" in line
