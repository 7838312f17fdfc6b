"""Inbound messaging in the daemon: the inboxes' consumers, their wake-ups and the trimming.

Which inboxes are served: every company this daemon drives, and every inbox found in the
state directory at start. A company this daemon stops driving (moved, removed) keeps being
served from here until its inbox is drained: what its session received here is delivered from
here, whoever drives it now (events are de-duplicated downstream by their ids).

Inboxes are trimmed every ``TRIM_EVERY`` seconds: events every consumer has passed and older
than ``WAPOOL_INBOX_KEEP_HOURS`` are deleted, in small batches. ``consumers`` lists who must
have passed an event first (outbound statuses may add theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable

from wapool.db.pool import Database
from wapool.leases import Fence
from wapool.messaging import inbound_mirror, webhook
from wapool.messaging.cursors import CURSORS_FILE, Cursors
from wapool.messaging.feed import InboxFeed
from wapool.messaging.inbound_mirror import InboundMirror
from wapool.messaging.inbox import INBOX_FILE, InboxReader
from wapool.messaging.webhook import Webhook, WebhookConfig
from wapool.observability.redact import describe_error
from wapool.settings import Settings
from wapool.store.mirror import Mirror

log = logging.getLogger(__name__)

TRIM_EVERY = 600.0


class InboundMessaging:
    def __init__(self, settings: Settings, db: Database, mirror: Mirror, fence: Fence | None):
        self._state_dir = settings.state_dir
        self._keep = settings.inbox_keep_hours * 3600
        self.cursors = Cursors(settings.state_dir / CURSORS_FILE)
        #: One read of each inbox per notice for all consumers (the outbound receipts too).
        self.feed = InboxFeed()
        self.postgres = InboundMirror(db, self.cursors, fence, self.feed)
        mirror.parts.append(self.postgres)
        self.webhook: Webhook | None = None
        self.consumers = [inbound_mirror.CONSUMER]
        if settings.webhook_url is not None and settings.webhook_secret is not None:
            config = WebhookConfig(
                settings.webhook_url, settings.webhook_secret.get_secret_value().encode(),
                max_age=settings.webhook_max_age, timeout=settings.webhook_timeout_seconds,
                max_in_flight=settings.webhook_max_in_flight,
                retry_base=settings.webhook_retry_base_seconds,
                retry_cap=settings.webhook_retry_cap_seconds,
            )  # fmt: skip
            self.webhook = Webhook(config, self.cursors, feed=self.feed)
            self.consumers.append(webhook.CONSUMER)
        self._served: set[str] = set()

    def serve(self, companies: Iterable[str]) -> None:
        """Serve these companies' inboxes (from now until this process ends)."""
        for company in companies:
            if company in self._served:
                continue
            self._served.add(company)
            path = self._state_dir / company / INBOX_FILE
            self.postgres.add(company, path)
            if self.webhook is not None:
                self.webhook.add(company, path)

    def serve_found(self) -> None:
        """Serve every inbox left in the state directory (a backlog from before a restart)."""
        with contextlib.suppress(OSError):
            self.serve(sorted(p.parent.name for p in self._state_dir.glob(f"*/{INBOX_FILE}")))

    def on_inbox(self, company: str, _seq: int) -> None:
        """A worker's notice: the company's inbox advanced."""
        if company not in self._served:
            self.serve([company])
        if self.webhook is not None:
            self.webhook.wake(company)
        # The mirror's loop picks it up within its poll interval (20 ms); waking it at every
        # message would make it re-read every company's change log hundreds of times a second.
        self.postgres.touch(company)

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._trim_loop(stop), name="inbox-trim")]
        if self.webhook is not None:
            tasks.append(asyncio.create_task(self.webhook.run(stop), name="webhook"))
        await asyncio.gather(*tasks)

    async def _trim_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TRIM_EVERY)
            if not stop.is_set():
                await asyncio.to_thread(self.trim, time.time())

    def trim(self, now: float) -> int:
        deleted = 0
        for company in sorted(self._served):
            path = self._state_dir / company / INBOX_FILE
            try:
                reader = InboxReader(path)
                try:
                    upto = self.cursors.lowest(company, reader.identity(), self.consumers)
                    deleted += reader.trim(upto, older_than=now - self._keep)
                finally:
                    reader.close()
            except (sqlite3.Error, OSError) as exc:
                log.error(
                    "inbox_trim_failed", extra={"company": company, "error": describe_error(exc)}
                )
        return deleted

    def close(self) -> None:
        self.feed.close()
        self.cursors.close()
