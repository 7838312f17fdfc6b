"""``wapool status`` while PostgreSQL is unreachable: what the daemon on this host says.

The session states normally come from PostgreSQL; during an outage the local daemon's
``/status`` (``WAPOOL_HTTP_ADDR``) is the only witness left, so the command shows it, with the
daemon's mode (``degraded`` after a start without PostgreSQL) and the age of the registry it
runs from. Nothing answering there is said plainly, and the command fails.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from wapool.cli.table import render
from wapool.errors import DatabaseUnavailable, WapoolError
from wapool.settings import Settings, split_host_port


def local_status(settings: Settings, error: DatabaseUnavailable) -> dict[str, Any]:
    host, port = split_host_port(settings.http_addr)
    host = "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104 (reaching, not binding)
    url = f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WapoolError(f"{error}; and no daemon answers at {url} ({exc})") from None
    return body


def render_local(status: dict[str, Any], error: DatabaseUnavailable) -> str:
    offline = status.get("offline_start") or {}
    disk = (status.get("caches") or {}).get("registry_on_disk") or {}
    age = disk.get("age_seconds")
    lines = [
        f"PostgreSQL unreachable ({error}); as the daemon on this host reports it:",
        f"mode: {status.get('mode', 'unknown')}"
        + (f", registry as last seen {age:.0f} s ago" if isinstance(age, int | float) else "")
        + (f", {len(offline.get('resumed', []))} companies resumed without PostgreSQL"
           if offline and not offline.get("recovered_at") else ""),
    ]  # fmt: skip
    rows = [
        (company, str(c.get("state")), "-" if c.get("pending_rows") is None
         else str(c["pending_rows"]), str(c.get("last_error") or "-")[:60])
        for company, c in sorted((status.get("companies") or {}).items())
    ]  # fmt: skip
    lines.append(render(("COMPANY", "STATE", "PENDING", "LAST ERROR"), rows, "(no companies)"))
    return "\n".join(lines)
