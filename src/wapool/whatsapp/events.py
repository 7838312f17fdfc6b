"""What a WhatsApp client tells wapool, as wapool's own types (no neonize types leak out)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QrCode:
    """A QR code to show for pairing (rotates; each new one replaces the last)."""

    code: str


@dataclass(frozen=True)
class PairCode:
    """The code to type on the phone when pairing by phone number."""

    code: str


@dataclass(frozen=True)
class Paired:
    jid: str


@dataclass(frozen=True)
class Connected:
    pass


@dataclass(frozen=True)
class Disconnected:
    reason: str


@dataclass(frozen=True)
class ConnectFailed:
    """The connection attempt failed before a session was up (DNS, network, refused)."""

    reason: str


@dataclass(frozen=True)
class LoggedOut:
    reason: str


@dataclass(frozen=True)
class StreamReplaced:
    """Another client took over this session."""


@dataclass(frozen=True)
class TemporaryBan:
    code: str
    #: Seconds until the ban ends.
    expires_in: int


@dataclass(frozen=True)
class ClientOutdated:
    pass


@dataclass(frozen=True)
class KeepAliveTimeout:
    pass


@dataclass(frozen=True)
class KeepAliveRestored:
    pass


@dataclass(frozen=True)
class StoreFailed:
    """The client's working store failed under it; the client has stopped and waits for wapool
    to check the store (and restore it if it is proven broken) before it is started again.

    ``fault`` is a ``store.faults.Fault`` value: ``corrupt``, ``missing``, ``unreadable`` or
    ``full``."""

    reason: str
    fault: str


@dataclass(frozen=True)
class MessageReceived:
    count: int = 1


WhatsAppEvent = (
    QrCode | PairCode | Paired | Connected | Disconnected | ConnectFailed | LoggedOut
    | StreamReplaced | TemporaryBan | ClientOutdated | KeepAliveTimeout | KeepAliveRestored
    | MessageReceived | StoreFailed
)  # fmt: skip
