"""The supervisor as the settings ask for it: backend, sharding, limits and the simulated
backend's worker arguments."""

from __future__ import annotations

from wapool.settings import Settings
from wapool.store.working_store import store_path
from wapool.supervisor.reconciler import OnTransition, StartGuard, Supervisor


def build_supervisor(
    settings: Settings, on_transition: OnTransition, guard: StartGuard | None = None
) -> Supervisor:
    return Supervisor(
        settings.whatsapp_backend,
        settings.companies_per_worker,
        lambda company: store_path(settings.state_dir, company),
        connect_limit=settings.max_concurrent_connects,
        heartbeat_timeout=settings.worker_heartbeat_timeout_seconds,
        backend_args=simulated_args(settings) if settings.whatsapp_backend == "simulated" else (),
        on_transition=on_transition,
        guard=guard,
    )


def simulated_args(settings: Settings) -> tuple[str, ...]:
    """The simulated backend's worker arguments (``worker_main``)."""
    server = str(settings.simulated_server) if settings.simulated_server else "-"
    return (
        str(settings.simulated_churn_per_second), settings.simulated_pairing,
        server, settings.lease_holder, str(settings.simulated_inbound_per_second),
    )  # fmt: skip
