"""Where settings come from, checked before pydantic reads them: the ``.env`` file and the
environment.

* A ``.env`` that is not UTF-8 is refused with its line number (python-dotenv would raise a
  bare ``UnicodeDecodeError`` from deep inside pydantic-settings).
* A file named with ``--env-file`` must exist; only the default ``./.env`` is optional.
* An unknown ``WAPOOL_*`` name is refused wherever it is set. pydantic-settings already refuses
  one in ``.env`` but silently ignores one in the environment, and under systemd the
  environment (``EnvironmentFile=``) *is* the configuration: a misspelt
  ``WAPOOL_KEY_RETENTION_DAY=90`` there would keep the 30-day default and delete keys early.
  The few ``WAPOOL_*`` variables that wapool's own tools read from the environment
  (``TOOL_VARIABLES``) are not settings and are let through there.

Every problem is one line naming the file or the variable; values are never echoed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

UNKNOWN = "unknown setting (check the spelling against .env.example)"

#: Read from the environment by ``wapool.devdb``, ``deploy/install.sh`` and the test suite.
TOOL_VARIABLES = frozenset(
    {
        "WAPOOL_DEVDB_DIR",
        "WAPOOL_DEVDB_PORT",
        "WAPOOL_INSTALL_ROOT",
        "WAPOOL_INSTALL_SKIP_PIP",
        "WAPOOL_CONVERGENCE_CASES",
        "WAPOOL_SLOW",
        "WAPOOL_WORKER_PARENT",  # set by the daemon for its worker processes
    }
)


def env_file_problems(env_file: str | Path | None, *, required: bool) -> list[str]:
    """Why ``env_file`` cannot be read as UTF-8 settings; empty when it can (or may be absent)."""
    if env_file is None:
        return []
    path = Path(env_file)
    if not path.exists():
        return [f"--env-file {path}: no such file"] if required else []
    shown = path.absolute()  # under systemd the working directory is not the operator's
    if not path.is_file():
        return [f"{shown}: not a regular file; settings files are plain text"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [f"{shown}: cannot read it ({exc.strerror})"]
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return [f"{shown} line {number}: not UTF-8 text; save the file as UTF-8"]
    return []


def unknown_variables(environ: Mapping[str, str], prefix: str, known: Iterable[str]) -> list[str]:
    """One line per ``prefix``ed name in ``environ`` that is neither a setting nor a tool's.

    Names are compared upper-cased, as pydantic-settings matches them case-insensitively."""
    allowed = {name.upper() for name in known} | TOOL_VARIABLES
    names = sorted({name.upper() for name in environ if name.upper().startswith(prefix)})
    return [f"{name}: {UNKNOWN}" for name in names if name not in allowed]
