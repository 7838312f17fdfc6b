"""Scrub secrets out of text before it reaches a log, Sentry, ``/status`` or an error line."""

from __future__ import annotations

import re

_PATTERNS = (
    # URL credentials: scheme://user:password@host
    (
        re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?P<post>@)", re.I),
        r"\g<pre>***\g<post>",
    ),
    # libpq key=value and similar: password=..., token=...
    (
        re.compile(
            r"(?P<pre>\b(?:password|passwd|pwd|token|secret)\s*[=:]\s*)(?:'[^']*'|\"[^\"]*\"|\S+)",
            re.I,
        ),
        r"\g<pre>***",
    ),
    # Telegram bot tokens inside Bot API URLs
    (re.compile(r"/bot\d+:[A-Za-z0-9_-]+"), "/bot***"),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def describe_error(exc: BaseException) -> str:
    """``Type: message`` on one line, with secrets scrubbed."""
    message = " ".join(str(exc).split())
    name = type(exc).__name__
    return redact(f"{name}: {message}" if message else name)
