"""What the state directory keeps so a daemon can resume alone: the registry as PostgreSQL last
gave it (``registry.json``) and the leases this daemon held with their epochs (``leases.json``).

The registry file is rewritten after every successful registry read (with the time PostgreSQL
confirmed it, and the other daemons that held leases then); the lease file whenever the set of
held leases or an epoch changes. Both are ``state_file``s: a torn or edited file is detected on
reading and ignored, which leaves the daemon waiting for PostgreSQL as before.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from wapool.clock import Clock, SystemClock
from wapool.errors import InvalidCompanyId
from wapool.outage.state_file import CorruptStateFile, read_state, write_state
from wapool.registry.company import Company, validate_company_id

log = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
LEASES_FILE = "leases.json"


@dataclass(frozen=True)
class LastSeen:
    """The registry and leases as this daemon last saw them in PostgreSQL."""

    holder: str
    companies: list[Company]
    #: Wall-clock time PostgreSQL last confirmed the registry.
    registry_at: float
    #: Other daemons holding unexpired leases then (several hosts share the database).
    other_holders: list[str]
    #: Company -> epoch of the leases this daemon held.
    leases: dict[str, int]

    def age_seconds(self, now: float) -> float:
        return max(0.0, now - self.registry_at)


def _company_to_json(c: Company) -> dict[str, Any]:
    return {
        "id": c.id, "display_name": c.display_name, "enabled": c.enabled,
        "paired_jid": c.paired_jid, "created_at": c.created_at.isoformat(),
        "updated_at": c.updated_at.isoformat(),
        "removed_at": c.removed_at.isoformat() if c.removed_at else None,
    }  # fmt: skip


def _company_from_json(data: Any) -> Company:
    if not isinstance(data, dict):
        raise CorruptStateFile("a company entry is not an object")
    try:
        removed = data["removed_at"]
        return Company(
            validate_company_id(str(data["id"])), str(data["display_name"]),
            bool(data["enabled"]), None if data["paired_jid"] is None else str(data["paired_jid"]),
            datetime.fromisoformat(data["created_at"]), datetime.fromisoformat(data["updated_at"]),
            None if removed is None else datetime.fromisoformat(removed),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, InvalidCompanyId) as exc:
        raise CorruptStateFile(f"a company entry is malformed ({exc})") from None


class LastSeenStore:
    def __init__(self, state_dir: Path, holder: str, clock: Clock | None = None) -> None:
        self.registry_path = state_dir / REGISTRY_FILE
        self.leases_path = state_dir / LEASES_FILE
        self.holder = holder
        self._clock = clock or SystemClock()
        self._leases_written: dict[str, int] | None = None
        #: When PostgreSQL last confirmed the registry written here (wall clock; None: never).
        self.confirmed_at: float | None = None
        #: Saves run in worker threads (``outage.resume``): one at a time (a save ends with two
        #: fsyncs) ...
        self._saving = threading.Lock()
        #: ... and, on the event loop, taken in the order they were asked for.
        self.turn = asyncio.Lock()
        #: That order (``ask``), and the latest written of each file: a save whose awaiting
        #: task was cancelled gives up its turn while its thread runs on, and may then finish
        #: after a later save of the same file; it must not put the older state back.
        self._asked = itertools.count(1)
        self._written: dict[Path, int] = {}

    def ask(self) -> int:
        """A save's place in line, taken when it is asked for (on the event loop)."""
        return next(self._asked)

    def _overtaken(self, path: Path, order: int) -> bool:
        """(Under ``_saving``.) Has a save asked for after ``order`` written ``path``? If
        not, ``order`` is now the latest to have had its say."""
        if order < self._written.get(path, 0):
            return True
        self._written[path] = order
        return False

    def age_seconds(self) -> float | None:
        """Age of the on-disk registry (what a restart during an outage would use)."""
        return (
            None if self.confirmed_at is None else max(0.0, self._clock.time() - self.confirmed_at)
        )

    def save_registry(
        self, companies: Iterable[Company], other_holders: Iterable[str], order: int | None = None
    ) -> None:
        """Record the registry PostgreSQL just confirmed (``order``: see ``ask``)."""
        order = self.ask() if order is None else order
        confirmed = self._clock.time()
        body = {
            "holder": self.holder,
            "confirmed_at": confirmed,
            "other_holders": sorted(set(other_holders) - {self.holder}),
            "companies": [_company_to_json(c) for c in companies],
        }
        with self._saving:
            if self._overtaken(self.registry_path, order):
                return
            write_state(self.registry_path, "registry", body)
            self.confirmed_at = confirmed

    def save_leases(self, held: Mapping[str, int], order: int | None = None) -> None:
        """Record the leases held now (nothing is written when they did not change;
        ``order``: see ``ask``)."""
        order = self.ask() if order is None else order
        current = dict(held)
        with self._saving:
            if self._overtaken(self.leases_path, order) or current == self._leases_written:
                return
            body = {"holder": self.holder, "saved_at": self._clock.time(), "leases": current}
            write_state(self.leases_path, "leases", body)
            self._leases_written = current

    def load(self) -> LastSeen | None:
        """Both files, checked; None (and a log line saying why) when either is missing,
        corrupt or not this daemon's."""
        try:
            registry = read_state(self.registry_path, "registry")
            leases = read_state(self.leases_path, "leases")
            if registry is None or leases is None:
                missing = self.registry_path if registry is None else self.leases_path
                log.info("last_seen_missing", extra={"path": str(missing)})
                return None
            return self._parse(registry, leases)
        except CorruptStateFile as exc:
            log.error("last_seen_corrupt", extra={"error": str(exc), "action": "ignored"})
            return None

    def held_before(self) -> list[str]:
        """The companies whose lease this daemon held when it last ran (``leases.json``; empty
        when the file is missing, damaged or another daemon's: logged as by ``load``)."""
        try:
            body = read_state(self.leases_path, "leases")
            if body is None:
                return []
            if body.get("holder") != self.holder:
                log.warning("last_seen_other_holder", extra={
                    "path": str(self.leases_path), "holder": str(body.get("holder")),
                    "node": self.holder,
                })  # fmt: skip
                return []
            held = body["leases"]
            if not isinstance(held, dict):
                raise TypeError("leases of the wrong type")
            return [validate_company_id(str(c)) for c in held]
        except (KeyError, TypeError, ValueError, InvalidCompanyId) as exc:
            log.error("last_seen_corrupt", extra={"error": f"state files are malformed ({exc})",
                                                  "action": "ignored"})  # fmt: skip
        except CorruptStateFile as exc:
            log.error("last_seen_corrupt", extra={"error": str(exc), "action": "ignored"})
        return []

    def _parse(self, registry: dict[str, Any], leases: dict[str, Any]) -> LastSeen | None:
        for body, path in ((registry, self.registry_path), (leases, self.leases_path)):
            if body.get("holder") != self.holder:
                log.warning("last_seen_other_holder", extra={
                    "path": str(path), "holder": str(body.get("holder")), "node": self.holder,
                })  # fmt: skip
                return None
        try:
            raw_companies = registry["companies"]
            held = leases["leases"]
            if not isinstance(raw_companies, list) or not isinstance(held, dict):
                raise TypeError("companies or leases of the wrong type")
            epochs = {validate_company_id(str(c)): int(e) for c, e in held.items()}
            others = [str(h) for h in registry["other_holders"]]
            confirmed = float(registry["confirmed_at"])
        except (KeyError, TypeError, ValueError, InvalidCompanyId) as exc:
            raise CorruptStateFile(f"state files are malformed ({exc})") from None
        companies = [_company_from_json(c) for c in raw_companies]
        self._leases_written = epochs
        self.confirmed_at = confirmed
        return LastSeen(self.holder, companies, confirmed, others, epochs)
