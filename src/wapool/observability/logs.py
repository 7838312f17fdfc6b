"""Journal-friendly logs: one line per event, ``key=value`` fields, no colour.

Use ``log.info("event_name", extra={"company": "962302", ...})``; the formatter renders the
message followed by every extra field as logfmt. Under systemd (``JOURNAL_STREAM`` set) each
line starts with the ``<N>`` syslog priority prefix so the journal records the right level.

A line logged with an exception (``log.exception``, ``exc_info=``) carries it as
``error="Type: message"`` (see ``redact.describe_error``): never just the type, never empty.
Every value is scrubbed of secrets (``redact``) on its way out, whoever logged it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

from wapool.observability.redact import describe_error, redact

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _quote(value: Any) -> str:
    text = redact(str(value))
    if text == "" or any(ch in text for ch in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


class LogfmtFormatter(logging.Formatter):
    def __init__(self, *, journal: bool, with_time: bool) -> None:
        super().__init__()
        self._journal = journal
        self._with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        fields: list[str] = []
        prefix = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>" if self._journal else ""
        if self._with_time:
            fields.append(f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}")
        fields.append(f"level={record.levelname.lower()}")
        fields.append(f"logger={record.name}")
        fields.append(f"event={_quote(record.getMessage())}")
        extra = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        }
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not str(extra.get("error", "")).strip():
            extra["error"] = describe_error(exc)
        fields.extend(f"{key}={_quote(value)}" for key, value in extra.items())
        return prefix + " ".join(fields)


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log line to stderr (the journal under systemd) in logfmt."""
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter(journal=journal, with_time=not journal))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg_pool logs every failed reconnection attempt at WARNING; wapool reports outages
    # itself, once, through the health tracker.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
