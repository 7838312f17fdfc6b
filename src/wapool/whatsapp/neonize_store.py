"""Create or upgrade whatsmeow's schema in working stores, through neonize itself.

neonize's ``ClientFactory.get_all_devices_from_db`` creates (or upgrades) the schema in a few
milliseconds without network, but leaks one database handle per call and loads the Go runtime
into the calling process. So wapool calls it in a short-lived child process, once per file:

    python -m wapool.whatsapp.neonize_store PATH [PATH...]

It prints one line per store: ``<path>\\t<number of devices>\\t<JID or ->``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

TIMEOUT_SECONDS = 60.0


class SchemaCreationFailed(Exception):
    pass


def create_schema(paths: Sequence[Path]) -> dict[Path, list[str]]:
    """Run neonize on each path in a child process; return the JIDs each store holds."""
    if not paths:
        return {}
    result = subprocess.run(
        [sys.executable, "-m", "wapool.whatsapp.neonize_store", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise SchemaCreationFailed(f"neonize could not prepare the working store: {detail}")
    devices: dict[Path, list[str]] = {}
    for line in result.stdout.splitlines():
        path, _, jids = line.split("\t")
        devices[Path(path)] = [] if jids == "-" else jids.split(",")
    return devices


def _main(argv: Sequence[str]) -> int:
    from neonize.client import ClientFactory

    for raw in argv:
        devices = ClientFactory.get_all_devices_from_db(raw)
        jids = [f"{d.JID.User}@{d.JID.Server}" for d in devices]
        print(f"{raw}\t{len(jids)}\t{','.join(jids) or '-'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
