"""One company's session state machine, pure: inputs in, state and actions out.

    stopped -> starting -> pairing -> connected <-> reconnecting
    any -> logged_out       (registry marked unpaired; alert before the keys go)
    any -> stream_replaced  (no reconnect: something else took the session)
    any -> banned           (wait until the ban ends, then reconnect)
    any -> client_outdated  (alert once, no loop)
    starting/connected -> failed -> reconnecting (backoff)
    any -> store_failed -> starting  (the client's working store failed: it is repaired first)

A failed store is never reconnected to as it is: the session asks for a repair (the keeper
inspects the store, restores it if it is proven broken, or finds it writable again after a full
disk), retried with backoff, and only a successful repair makes the client due to start again.

Reconnecting uses exponential backoff with full jitter and a cap. The machine never sleeps or
calls anything itself: it answers "what now" and "when next", so the supervisor (and the tests,
on a travelled clock) drive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from wapool.backoff import Backoff
from wapool.whatsapp import events as ev


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    PAIRING = "pairing"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    LOGGED_OUT = "logged_out"
    STREAM_REPLACED = "stream_replaced"
    BANNED = "banned"
    CLIENT_OUTDATED = "client_outdated"
    FAILED = "failed"
    STORE_FAILED = "store_failed"


#: States in which no automatic (re)connect happens until an operator acts.
TERMINAL = frozenset({State.LOGGED_OUT, State.STREAM_REPLACED, State.CLIENT_OUTDATED})
#: States a lost connection does not change: nothing runs, or the store must be repaired first.
_WAITING = frozenset({State.STOPPED, State.STORE_FAILED})


@dataclass
class Session:
    company_id: str
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=300.0))
    state: State = State.STOPPED
    since: float = 0.0
    last_error: str | None = None
    #: When the next connect attempt is due (monotonic seconds), if one is scheduled.
    next_attempt: float | None = None
    reconnects: int = 0
    messages: int = 0
    paired_jid: str | None = None
    #: When the next store repair is due (store_failed), if one is scheduled.
    repair_at: float | None = None
    repair_backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=60.0))
    #: The store fault that stopped the client (a ``store.faults.Fault`` value), if any.
    store_fault: str | None = None

    def _go(self, state: State, now: float, error: str | None = None) -> None:
        if state is not self.state:
            self.state, self.since = state, now
        if error is not None:
            self.last_error = error

    def start(self, now: float) -> None:
        """The supervisor launched the client."""
        self.next_attempt = None
        self._go(State.STARTING, now)

    def stop(self, now: float) -> None:
        self.next_attempt = None
        self._go(State.STOPPED, now)

    def crashed(self, now: float, reason: str) -> None:
        """The worker hosting the client died or hung."""
        if self.state in TERMINAL or self.state in _WAITING:
            return
        self._go(State.FAILED, now, reason)
        self._schedule(now)

    def on_event(self, event: ev.WhatsAppEvent, now: float) -> None:
        match event:
            case ev.QrCode() | ev.PairCode():
                self._go(State.PAIRING, now)
            case ev.Paired(jid=jid):
                self.paired_jid = jid
            case ev.Connected():
                self.backoff.reset()
                self.next_attempt = None
                self._go(State.CONNECTED, now)
            case ev.Disconnected(reason=reason) | ev.ConnectFailed(reason=reason):
                if self.state not in TERMINAL and self.state not in _WAITING:
                    self._go(State.RECONNECTING, now, reason)
                    self._schedule(now)
            case ev.KeepAliveTimeout():
                self.last_error = "keep-alive timeout"
            case ev.MessageReceived(count=count):
                self.messages += count
            case ev.LoggedOut(reason=reason):
                self.next_attempt = None
                self._go(State.LOGGED_OUT, now, f"logged out: {reason}")
            case ev.StreamReplaced():
                self.next_attempt = None
                self._go(State.STREAM_REPLACED, now, "another client took over the session")
            case ev.TemporaryBan(code=code, expires_in=seconds):
                self._go(State.BANNED, now, f"temporary ban {code}")
                self.next_attempt = now + max(seconds, 1)
            case ev.ClientOutdated():
                self.next_attempt = None
                self._go(State.CLIENT_OUTDATED, now, "WhatsApp says this client is outdated")
            case ev.StoreFailed(reason=reason, fault=fault):
                if self.state not in TERMINAL and self.state is not State.STORE_FAILED:
                    self.next_attempt = None
                    self.repair_at = now
                    self.store_fault = fault
                    self._go(State.STORE_FAILED, now, f"working store {fault}: {reason}")
            case _:
                pass

    def repair_due(self, now: float) -> bool:
        """Should the supervisor ask for the store to be repaired now?"""
        return self.repair_at is not None and now >= self.repair_at

    def repairing(self) -> None:
        """A repair is under way: none other until it answers."""
        self.repair_at = None

    def repaired(self, now: float, ok: bool) -> None:
        """The repair answered: start the client again, or try again after a while."""
        if self.state is not State.STORE_FAILED:
            return
        if ok:
            self.repair_backoff.reset()
            self.store_fault = None
            self.next_attempt = now
        else:
            self.repair_at = now + self.repair_backoff.next_delay()

    def _schedule(self, now: float) -> None:
        self.reconnects += 1
        self.next_attempt = now + self.backoff.next_delay()

    def due(self, now: float) -> bool:
        """Should the supervisor (re)start the client now?"""
        return self.next_attempt is not None and now >= self.next_attempt


class ConnectGate:
    """A global limit on connects in flight, so a network blip does not become a storm."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the connect limit must be at least 1")
        self.limit = limit
        self._holders: set[str] = set()
        self.peak = 0

    def try_acquire(self, company_id: str) -> bool:
        if company_id in self._holders:
            return True
        if len(self._holders) >= self.limit:
            return False
        self._holders.add(company_id)
        self.peak = max(self.peak, len(self._holders))
        return True

    def release(self, company_id: str) -> None:
        self._holders.discard(company_id)

    @property
    def in_flight(self) -> int:
        return len(self._holders)
