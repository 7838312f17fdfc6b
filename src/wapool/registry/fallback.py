"""Registry reads with the outage fallback: PostgreSQL first, the TTL cache when it fails.

Every successful read refreshes the cache; while PostgreSQL is unavailable the last-known-good
answer is served until it is older than ``WAPOOL_CACHE_TTL_SECONDS``, after which the outage
error surfaces. This is how the daemon still knows its companies during an outage.
"""

from __future__ import annotations

import logging

from wapool.cache import FallbackCache
from wapool.errors import DatabaseUnavailable
from wapool.registry.company import Company
from wapool.registry.repository import CompanyRepository

log = logging.getLogger(__name__)

_ACTIVE = "active"


class Registry:
    def __init__(
        self, repository: CompanyRepository, cache: FallbackCache[str, list[Company]]
    ) -> None:
        self.repository = repository
        self.cache = cache

    async def active_companies(self) -> list[Company]:
        """Companies that should have a running client (enabled, not removed)."""
        try:
            companies = [c for c in await self.repository.list() if c.active]
        except DatabaseUnavailable as exc:
            recalled = self.cache.recall(_ACTIVE)
            if recalled is None:
                raise DatabaseUnavailable(
                    f"{exc}; no cached registry younger than {self.cache.ttl_seconds:g} s"
                ) from None
            log.debug(
                "registry_from_cache",
                extra={
                    "age_seconds": round(recalled.age_seconds, 1),
                    "companies": len(recalled.value),
                },
            )
            return recalled.value
        self.cache.remember(_ACTIVE, companies)
        return companies
