"""Markers by what a test needs, applied at collection so nobody has to remember them.

* ``postgres``: the test uses the throwaway PostgreSQL cluster (any database fixture).
* ``process``: the test starts child processes: the ``daemons`` fixture; the cluster fixture
  asked for by name (to stop and start the server with pg_ctl); or, in its body or in a helper
  from tests/ it calls, ``subprocess``, ``run_cli`` or one of wapool's own spawners.
* ``unit``: everything else. ``make test-fast`` runs only these.

A test can be both ``postgres`` and ``process``. A test that starts a child process while not
marked ``process`` fails (see ``no_child_processes``): the quick group stays quick and honest,
and a spawner the scan does not know is found the first time it is used.
"""

from __future__ import annotations

import inspect
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import CodeType, FunctionType
from typing import Any

import pytest

POSTGRES_FIXTURES = frozenset({"cluster"})
PROCESS_FIXTURES = frozenset({"daemons"})
# Asked for directly (not through a database fixture), the cluster is there to be stopped and
# started: pg_ctl in a child process.
PROCESS_ARGUMENTS = frozenset({"cluster", "running_cluster"})
# Names whose use starts a child process: the standard library's and wapool's own spawners
# (worker pools, neonize's schema helper behind provisioning, a cluster's pg_ctl). Session
# fixtures that start one process for the whole run (the whatsmeow template) do not make their
# users process tests.
PROCESS_NAMES = frozenset(
    {
        "subprocess",
        "create_subprocess_exec",
        "create_subprocess_shell",
        "run_cli",
        "Supervisor",
        "WorkerPool",
        "create_schema",
        "provision",
        "Cluster",
    }
)


def classify(items: Iterable[pytest.Item]) -> None:
    """Add ``postgres``, ``process`` or ``unit`` to each collected test."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & POSTGRES_FIXTURES:
            item.add_marker(pytest.mark.postgres)
        if fixtures & PROCESS_FIXTURES or _starts_processes(item):
            item.add_marker(pytest.mark.process)
        if not any(item.get_closest_marker(name) for name in ("postgres", "process")):
            item.add_marker(pytest.mark.unit)


def _starts_processes(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    if not isinstance(function, FunctionType):
        return False
    function = inspect.unwrap(function)
    if PROCESS_ARGUMENTS & set(inspect.signature(function).parameters):
        return True
    return bool(_names(function.__code__, function.__globals__, set()) & PROCESS_NAMES)


def _names(code: CodeType, scope: dict[str, Any], seen: set[CodeType]) -> set[str]:
    """Global and attribute names a function uses, through nested code and the helpers of
    tests/ it calls."""
    seen.add(code)
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType) and const not in seen:
            names |= _names(const, scope, seen)
    for name in list(names):
        helper = scope.get(name)
        if (
            isinstance(helper, FunctionType)
            and helper.__module__.startswith("tests")
            and helper.__code__ not in seen
        ):
            names |= _names(helper.__code__, helper.__globals__, seen)
    return names


@contextmanager
def no_child_processes(nodeid: str) -> Iterator[None]:
    """Make starting a child process (``subprocess``, asyncio's too) fail inside the block."""
    original = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        raise AssertionError(
            f"{nodeid} starts a child process ({args!r}) but is not marked 'process': "
            "use the daemons fixture or run_cli, or add @pytest.mark.process"
        )

    subprocess.Popen._execute_child = refuse  # type: ignore[attr-defined]
    try:
        yield
    finally:
        subprocess.Popen._execute_child = original  # type: ignore[attr-defined]
