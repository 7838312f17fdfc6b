"""What operators see over HTTP: ``/readyz``, ``/metrics`` and ``/status``.

Each view is rendered at its request from the daemon's live parts (sessions, worker pool, mirror
statistics, outage caches, PostgreSQL health, the last cleanup and size sample). Nothing here
holds a secret: the views show the daemon's own counters and states.

Readiness also covers the working stores: a client stopped by its store (``store_failed``) or a
store that cannot be provisioned makes the daemon unready, saying which and why; when the
cause is a full disk, the state directory's free space is part of the answer.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from typing import Any

from wapool.cleanup import sizes
from wapool.observability.http import Endpoints
from wapool.observability.metrics import Exposition
from wapool.runtime import Runtime
from wapool.supervisor.session import State


class Views:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def endpoints(self) -> Endpoints:
        return Endpoints(self.ready, self.metrics, self.status)

    def ready(self) -> tuple[bool, str]:
        """Ready: PostgreSQL reachable (or down for less than the cache TTL) and no shard down."""
        rt = self._rt
        if rt.offline is not None and rt.offline.degraded:
            return False, "degraded: " + rt.offline.describe(time.time())
        health = rt.db.health.snapshot()
        down_for = 0.0 if health.up else time.monotonic() - health.since_monotonic
        if down_for > rt.settings.cache_ttl_seconds:
            return (
                False,
                f"PostgreSQL down for {down_for:.0f} s (cache grace {rt.settings.cache_ttl_seconds:g} s)",
            )
        failed = sorted(c for c, s in rt.supervisor.sessions.items() if s.state is State.FAILED)
        if failed:
            return False, f"worker down for {', '.join(failed)}"
        stores = self._store_problems()
        if stores:
            return False, stores
        return True, "ready"

    def _store_problems(self) -> str:
        """Stores that keep a client from running, and the disk when it is full."""
        rt = self._rt
        problems = {
            c: s.last_error or "store failed"
            for c, s in rt.supervisor.sessions.items()
            if s.state is State.STORE_FAILED
        }
        problems.update(rt.keeper.failing)
        if not problems:
            return ""
        text = "working store unusable: " + "; ".join(
            f"{c}: {e}" for c, e in sorted(problems.items())
        )
        sessions = rt.supervisor.sessions.values()
        if rt.keeper.disk_full or any(s.store_fault == "full" for s in sessions):
            free = self._disk().get("free_bytes")
            text += f"; state directory {rt.settings.state_dir} full ({free} bytes free)"
        return text

    def _disk(self) -> dict[str, Any]:
        try:
            usage = shutil.disk_usage(self._rt.settings.state_dir)
        except OSError as exc:
            return {"error": str(exc)}
        return {"free_bytes": usage.free, "total_bytes": usage.total}

    def metrics(self) -> str:
        out = Exposition()
        self._sessions(out)
        self._mirror(out)
        self._caches(out)
        self._database(out)
        self._workers_and_cleanup(out)
        self._messaging(out)
        if self._rt.outbound is not None:
            self._rt.outbound.metrics(out)
        self._fleet(out)
        return out.render() + sizes.metrics_text(self._rt.sizes.rows)

    def status(self) -> dict[str, Any]:
        rt = self._rt
        now_mono, now_wall = time.monotonic(), time.time()
        lag = rt.mirror.stats.companies
        companies = {}
        for company, session in sorted(rt.supervisor.sessions.items()):
            mirror = lag.get(company)
            companies[company] = {
                "state": session.state.value,
                "since": now_wall - (now_mono - session.since) if session.since else None,
                "last_error": session.last_error,
                "paired_jid": session.paired_jid,
                "mirror_lag_seconds": mirror.lag_seconds if mirror else None,
                "pending_rows": mirror.pending_rows if mirror else None,
                "snapshot_age_seconds": rt.snapshots.peek_age(company),
            }
        health = rt.db.health.snapshot()
        offline = rt.offline
        return {
            "node": rt.leases.holder,
            "share": rt.share,
            "draining": rt.view.draining if rt.view else False,
            "mode": "degraded" if offline is not None and offline.degraded else "normal",
            "offline_start": None
            if offline is None
            else {
                "started_at": offline.started_wall,
                "recovered_at": offline.recovered_wall,
                "registry_age_seconds": offline.registry_age(offline.started_wall),
                "resumed": sorted(offline.resumed),
                "leases_lost": offline.lost,
            },
            "caches": self._cache_ages(),
            "database": {"up": health.up, "last_error": health.last_error},
            "state_dir": self._disk(),
            "companies": companies,
            "messaging": self._messaging_status(),
            "outbound": self._rt.outbound.status() if self._rt.outbound is not None else None,
        }

    def _messaging_status(self) -> dict[str, Any]:
        messaging = self._rt.messaging
        hook = messaging.webhook
        status: dict[str, Any] = {
            "inbound_pending_postgres": messaging.postgres.pending,
            "inbound_applied": messaging.postgres.applied,
            "webhook": None,
        }
        if hook is not None:
            status["webhook"] = {
                "delivered": hook.stats.delivered,
                "failed_attempts": hook.stats.failed_attempts,
                "backlog": hook.backlog,
                "in_flight": hook.stats.in_flight,
                "dead_letters": messaging.cursors.dead_letter_counts(),
            }
        return status

    # -- /metrics, family by family (the order is the exposition's) ----------------------------

    def _sessions(self, out: Exposition) -> None:
        sessions = self._rt.supervisor.sessions
        out.family("wapool_sessions", "gauge", "Sessions by state.",
                   [({"state": st.value}, float(sum(1 for s in sessions.values() if s.state is st)))
                    for st in State])  # fmt: skip
        out.family("wapool_session_reconnects_total", "counter", "Reconnects scheduled.",
                   [({"company": c}, float(s.reconnects)) for c, s in sessions.items()])  # fmt: skip
        out.family("wapool_messages_received_total", "counter", "Messages received.",
                   [({"company": c}, float(s.messages)) for c, s in sessions.items()])  # fmt: skip

    def _mirror(self, out: Exposition) -> None:
        lag = self._rt.mirror.stats.companies
        out.family("wapool_mirror_lag_seconds", "gauge", "Age of the oldest change not yet in PostgreSQL.",
                   [({"company": c}, v.lag_seconds) for c, v in lag.items()])  # fmt: skip
        out.family("wapool_mirror_pending_rows", "gauge", "Change-log entries not yet in PostgreSQL.",
                   [({"company": c}, float(v.pending_rows)) for c, v in lag.items()])  # fmt: skip
        out.family("wapool_mirror_rows_applied_total", "counter", "Rows written to PostgreSQL.",
                   [({}, float(self._rt.mirror.stats.rows_applied))])  # fmt: skip

    def _cache_ages(self) -> dict[str, Any]:
        """Who answers for PostgreSQL while it is down, and how old their answers are."""
        rt = self._rt
        result: dict[str, Any] = {}
        for name, cache in (("registry", rt.registry.cache), ("snapshots", rt.snapshots)):
            stats = cache.stats()
            result[name] = {"ttl_seconds": cache.ttl_seconds, "entries": stats.entries,
                            "oldest_age_seconds": stats.oldest_entry_age_seconds,
                            "last_hit_age_seconds": stats.last_hit_age_seconds}  # fmt: skip
        result["registry_on_disk"] = {"age_seconds": rt.last_seen.age_seconds()}
        return result

    def _caches(self, out: Exposition) -> None:
        for name, cache in (
            ("registry", self._rt.registry.cache.stats()),
            ("snapshots", self._rt.snapshots.stats()),
        ):
            labels = {"cache": name}
            out.family(f"wapool_cache_{name}_hits_total", "counter", "Outage fallbacks served.",
                       [(labels, float(cache.hits))])  # fmt: skip
            out.family(f"wapool_cache_{name}_misses_total", "counter", "Outage fallbacks not possible.",
                       [(labels, float(cache.misses))])  # fmt: skip
            out.family(f"wapool_cache_{name}_last_hit_age_seconds", "gauge", "Age of the last value served.",
                       [(labels, cache.last_hit_age_seconds or 0.0)])  # fmt: skip
            out.family(f"wapool_cache_{name}_oldest_age_seconds", "gauge", "Age of the oldest entry kept.",
                       [(labels, cache.oldest_entry_age_seconds or 0.0)])  # fmt: skip
            out.family(f"wapool_cache_{name}_entries", "gauge", "Entries kept.",
                       [(labels, float(cache.entries))])  # fmt: skip
        age = self._rt.last_seen.age_seconds()
        out.family("wapool_registry_on_disk_age_seconds", "gauge",
                   "Age of the registry kept in the state directory (-1: none yet).",
                   [({}, -1.0 if age is None else age)])  # fmt: skip
        offline = self._rt.offline
        out.family("wapool_degraded", "gauge", "Running without PostgreSQL since the start.",
                   [({}, float(offline is not None and offline.degraded))])  # fmt: skip

    def _database(self, out: Exposition) -> None:
        health = self._rt.db.health.snapshot()
        out.family("wapool_database_up", "gauge", "PostgreSQL reachable.", [({}, float(health.up))])
        out.family("wapool_database_outages_total", "counter", "Outages seen.",
                   [({}, float(health.outages))])  # fmt: skip
        out.family("wapool_database_outage_seconds_total", "counter", "Seconds without PostgreSQL.",
                   [({}, health.outage_seconds_total)])  # fmt: skip

    def _messaging(self, out: Exposition) -> None:
        messaging = self._rt.messaging
        out.family("wapool_inbound_pending_postgres", "gauge", "Inbox events not yet in inbound_messages.",
                   [({}, float(messaging.postgres.pending))])  # fmt: skip
        out.family("wapool_inbound_mirrored_total", "counter", "Inbound messages written to PostgreSQL.",
                   [({}, float(messaging.postgres.applied))])  # fmt: skip
        hook = messaging.webhook
        if hook is None:
            return
        stats = hook.stats
        out.family("wapool_webhook_delivered_total", "counter", "Webhook deliveries accepted (2xx).",
                   [({}, float(stats.delivered))])  # fmt: skip
        out.family("wapool_webhook_failed_attempts_total", "counter", "Webhook attempts that failed.",
                   [({}, float(stats.failed_attempts))])  # fmt: skip
        out.family("wapool_webhook_dead_letters", "gauge", "Events the webhook gave up on, kept on this host.",
                   [({"company": c}, float(n)) for c, n in messaging.cursors.dead_letter_counts().items()])  # fmt: skip
        out.family("wapool_webhook_backlog", "gauge", "Events read and not yet delivered.",
                   [({}, float(hook.backlog))])  # fmt: skip
        out.family("wapool_webhook_in_flight", "gauge", "Webhook requests in flight.",
                   [({}, float(stats.in_flight))])  # fmt: skip
        _summary(out, "wapool_webhook_latency_seconds",
                 "Inbox write to the receiver's 2xx, recent deliveries.", {}, stats.latencies)  # fmt: skip

    def _workers_and_cleanup(self, out: Exposition) -> None:
        pool = self._rt.supervisor.pool
        out.family("wapool_worker_restarts_total", "counter", "Worker processes restarted.",
                   [({}, float(pool.restarts))])  # fmt: skip
        out.family("wapool_workers", "gauge", "Worker processes running.",
                   [({}, float(len(pool.workers)))])  # fmt: skip
        last = self._rt.cleanup.last
        out.family("wapool_cleanup_last_deleted_rows", "gauge", "Rows deleted by the last cleanup.",
                   [({}, float(last.rows if last else 0))])  # fmt: skip

    def _fleet(self, out: Exposition) -> None:
        """Several hosts: this node's companies and share, leases, handoffs."""
        rt = self._rt
        node = {"node": rt.leases.holder}
        stats = rt.handoffs.stats
        out.family("wapool_node_companies", "gauge", "Companies whose lease this node holds.",
                   [(node, float(len(rt.leases.held)))])  # fmt: skip
        out.family("wapool_node_share", "gauge", "This node's fair share of the companies.",
                   [(node, float(rt.share or 0))])  # fmt: skip
        out.family("wapool_lease_renewals_total", "counter", "Lease renewal rounds done.",
                   [(node, float(rt.leases.renewals))])  # fmt: skip
        out.family("wapool_lease_losses_total", "counter", "Leases lost to another holder.",
                   [(node, float(rt.leases.losses))])  # fmt: skip
        out.family("wapool_handoffs_total", "counter", "Companies handed over (out) or taken "
                   "through a handoff (in).", [(node | {"direction": "out"}, float(stats.handoffs_out)),
                   (node | {"direction": "in"}, float(stats.handoffs_in))])  # fmt: skip
        out.family("wapool_handoff_failures_total", "counter", "Handoff rounds that had to wait.",
                   [(node, float(stats.handoff_failures))])  # fmt: skip
        _summary(out, "wapool_handoff_seconds", "Stop of a handed-over client to its lease "
                 "given up.", node, stats.handoff_seconds)  # fmt: skip
        _summary(out, "wapool_lease_to_connected_seconds", "Lease taken to client connected.",
                 node, stats.lease_to_connected)  # fmt: skip


def _summary(
    out: Exposition, name: str, help_text: str, labels: dict[str, str], samples: Iterable[float]
) -> None:
    """p50 and p99 of the latest samples, as a gauge with a ``quantile`` label."""
    values = sorted(samples)
    quantiles = [
        (labels | {"quantile": q}, values[min(len(values) - 1, int(float(q) * len(values)))])
        for q in ("0.5", "0.99") if values
    ]  # fmt: skip
    out.family(name, "gauge", help_text + " Latest samples, by quantile.", quantiles)
