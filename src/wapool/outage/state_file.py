"""A small JSON file in the state directory that is either whole and checked, or ignored.

Written atomically (a private temporary file, fsync, rename, fsync of the folder) with a SHA-256
of its body inside, so a torn write, a disk error or an edit by hand is detected on reading:
``read_state`` raises ``CorruptStateFile`` and the caller ignores the file (and says so).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from wapool.store.working_store import fsync_path

FORMAT = 1
MAX_BYTES = 64 << 20


class CorruptStateFile(ValueError):
    """The file exists but cannot be trusted (unreadable, not ours, checksum mismatch)."""


def _digest(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_state(path: Path, kind: str, body: dict[str, Any]) -> None:
    """Replace ``path`` with ``body`` (JSON-serialisable), atomically and durably."""
    document = {"format": FORMAT, "kind": kind, "body": body, "sha256": _digest(body)}
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(document, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_path(path.parent)


def read_state(path: Path, kind: str) -> dict[str, Any] | None:
    """The body written by ``write_state``; None when there is no file."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CorruptStateFile(f"{path} is larger than {MAX_BYTES >> 20} MB")
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptStateFile(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptStateFile(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("kind") != kind:
        raise CorruptStateFile(f"{path} is not a {kind} file")
    if document.get("format") != FORMAT:
        raise CorruptStateFile(f"{path} has format {document.get('format')!r}, not {FORMAT}")
    body = document.get("body")
    if not isinstance(body, dict) or document.get("sha256") != _digest(body):
        raise CorruptStateFile(f"{path} fails its checksum (torn write or edited)")
    return body
