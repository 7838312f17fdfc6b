"""Starting without PostgreSQL: whether to resume, what, and how it ends.

A daemon that cannot reach PostgreSQL at start resumes the companies whose leases it held, from
their working stores, when ``WAPOOL_PARTITION_POLICY`` allows it:

* ``auto`` (default): only if no other daemon held a lease or sent a heartbeat when the
  registry was last seen (a single-host deployment); with several hosts it waits for PostgreSQL, as ``wait`` does;
* ``resume``: always (several hosts, availability first: see docs/several-hosts.md);
* ``wait``: never.

While it runs so (``degraded``), the on-disk registry stands in for PostgreSQL's, one warning
says so, and the mirror's per-company outage alerts stay quiet. When PostgreSQL returns every
lease is re-validated before the mirror applies anything; one recovery event follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from wapool.observability import alerts
from wapool.outage.last_seen import LastSeen
from wapool.registry.company import Company

log = logging.getLogger(__name__)

PartitionPolicy = Literal["auto", "resume", "wait"]


@dataclass
class OfflineStart:
    last_seen: LastSeen
    #: Active companies of the registry as last seen.
    companies: list[Company]
    #: Company -> epoch of the held leases resumed (active companies only).
    resumed: dict[str, int]
    started_wall: float
    recovered_wall: float | None = None
    kept: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return self.recovered_wall is None

    def registry_age(self, now_wall: float) -> float:
        return self.last_seen.age_seconds(now_wall)

    def describe(self, now_wall: float) -> str:
        return (
            f"started without PostgreSQL: {len(self.resumed)} companies resumed from their "
            f"working stores under the registry as last seen {self.registry_age(now_wall):.0f} s "
            "ago; leases are re-validated when PostgreSQL returns"
        )

    def announce(self, error: str, now_wall: float) -> None:
        """The one warning of this outage."""
        alerts.offline_start(
            error, self.registry_age(now_wall), len(self.resumed), len(self.companies)
        )

    def recovered(self, kept: list[str], lost: list[str], pending_rows: int, now: float) -> None:
        """PostgreSQL is back and every lease re-validated: the one recovery event."""
        self.recovered_wall = now
        self.kept, self.lost = kept, lost
        alerts.offline_recovered(now - self.started_wall, kept, lost, pending_rows)


def plan(
    policy: PartitionPolicy, last_seen: LastSeen | None, now_wall: float
) -> OfflineStart | None:
    """What to resume without PostgreSQL, or None (then the daemon waits for it), logged."""
    if policy == "wait":
        log.info("offline_start_refused", extra={"reason": "WAPOOL_PARTITION_POLICY=wait"})
        return None
    if last_seen is None:
        log.info("offline_start_refused", extra={"reason": "no usable registry and leases on disk"})
        return None
    if policy == "auto" and last_seen.other_holders:
        log.warning("offline_start_refused", extra={
            "reason": "other daemons held leases when the registry was last seen "
                      f"({', '.join(last_seen.other_holders)}); WAPOOL_PARTITION_POLICY=auto "
                      "resumes alone only on a single host",
        })  # fmt: skip
        return None
    companies = [c for c in last_seen.companies if c.active]
    active = {c.id for c in companies}
    resumed = {c: e for c, e in last_seen.leases.items() if c in active}
    if not resumed:
        log.info("offline_start_refused", extra={"reason": "no lease was held"})
        return None
    return OfflineStart(last_seen, companies, resumed, now_wall)
