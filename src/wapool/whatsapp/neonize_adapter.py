"""The neonize backend: the only module (with ``neonize_store``) that imports neonize.

Rules it enforces, from what neonize 0.5.2 really does:

* event handlers only translate and hand the event to ``emit`` (they run on whatsmeow's Go
  thread with a 100-slot buffer; a slow handler stalls whatsmeow); a message or receipt is in
  the company's inbox when ``emit`` returns (``neonize_events``, ``messaging.inbox``);
* ``uuid`` is always set (else neonize uses the database path as the Go key);
* nothing calls into a client outside a live ``connect()`` (``get_me()`` then is a Go panic that
  kills the process);
* ``connect()`` blocks and does not retry: it runs on its own thread, its failure becomes
  ``ConnectFailed`` and reconnecting is the supervisor's job;
* ``stop()`` can hang up to a minute: it is bounded, and a False answer means "recycle the
  worker process".

Store failures: whatsmeow reports a failing SQLite store only as an error, so what is
detectable is a ``connect()`` that fails with one of SQLite's own messages (corrupt, not a
database, unable to open, disk full, I/O error; see ``store.faults.classify_text``): that
becomes ``StoreFailed`` instead of ``ConnectFailed``, and the store is repaired before the
next connect. A store that breaks while the session is up goes unnoticed by whatsmeow (its
writes fail inside Go) until the session drops and reconnects.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from wapool.observability.redact import describe_error
from wapool.store.faults import classify_text
from wapool.whatsapp import events as ev
from wapool.whatsapp import media_tools
from wapool.whatsapp.neonize_events import translate_message, translate_receipt
from wapool.whatsapp.port import Emit
from wapool.whatsapp.sending import SendCommand, SendResult

log = logging.getLogger(__name__)


class NeonizeClient:
    def __init__(self, company_id: str, store: Path, emit: Emit) -> None:
        from neonize.client import NewClient

        self.company_id = company_id
        self._emit = emit
        self._client = NewClient(str(store), uuid=f"wapool-{company_id}")
        self._thread: threading.Thread | None = None
        self._connecting = threading.Event()
        #: Phone JIDs found on WhatsApp (asked once per client).
        self._on_whatsapp: set[str] = set()
        self._register()

    def _register(self) -> None:
        from neonize import events as ne

        client, emit = self._client, self._emit
        handlers: list[tuple[Any, Any]] = [
            (ne.ConnectedEv, lambda _c, _e: emit(ev.Connected())),
            (ne.PairStatusEv, lambda _c, e: emit(ev.Paired(_jid(e.ID)))),
            (ne.LoggedOutEv, lambda _c, e: emit(ev.LoggedOut(str(e.Reason)))),
            (ne.DisconnectedEv, lambda _c, _e: emit(ev.Disconnected("disconnected"))),
            (ne.StreamReplacedEv, lambda _c, _e: emit(ev.StreamReplaced())),
            (ne.TemporaryBanEv, lambda _c, e: emit(ev.TemporaryBan(str(e.Code), int(e.Expire)))),
            (ne.ClientOutdatedEv, lambda _c, _e: emit(ev.ClientOutdated())),
            (ne.KeepAliveTimeoutEv, lambda _c, _e: emit(ev.KeepAliveTimeout())),
            (ne.KeepAliveRestoredEv, lambda _c, _e: emit(ev.KeepAliveRestored())),
            (ne.MessageEv, lambda _c, e: emit(translate_message(self.company_id, e))),
            (ne.ReceiptEv, self._on_receipt),
            (ne.ConnectFailureEv, lambda _c, e: emit(ev.ConnectFailed(f"{e.Reason}: {e.Message}"))),
        ]
        for event_class, handler in handlers:
            client.event(event_class)(handler)
        client.event.qr(lambda _c, data: emit(ev.QrCode(data.decode(errors="replace"))))

    def _on_receipt(self, _client: Any, event: Any) -> None:
        receipt = translate_receipt(self.company_id, event)
        if receipt is not None:
            self._emit(receipt)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(
            target=self._connect, name=f"neonize-{self.company_id}", daemon=True
        )
        self._thread.start()

    def _connect(self) -> None:
        self._connecting.set()
        try:
            self._client.connect()
        except Exception as exc:  # neonize raises its own errors; all mean "not connected"
            fault = classify_text(str(exc))
            if fault is not None:
                self._emit(ev.StoreFailed(describe_error(exc), fault.value))
            else:
                self._emit(ev.ConnectFailed(describe_error(exc)))
        finally:
            self._connecting.clear()

    def stop(self, timeout: float) -> bool:
        if self._thread is None or not self._thread.is_alive():
            return True
        stopper = threading.Thread(target=self._client.stop, daemon=True)
        stopper.start()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def logout(self) -> None:
        if not self._connecting.is_set():
            raise RuntimeError("logout needs a live connection")
        self._client.logout()

    def send(self, command: SendCommand) -> SendResult:
        from wapool.whatsapp.neonize_send import send

        return send(self._client, command, self._on_whatsapp)

    def mark_read(self, chat: str, sender: str, message_ids: list[str]) -> None:
        from wapool.whatsapp.neonize_send import mark_read

        mark_read(self._client, chat, sender, message_ids)

    def pair_phone(self, phone: str) -> str:
        if not self._connecting.is_set():
            raise RuntimeError("pairing by phone needs a live connection")
        code = str(self._client.PairPhone(phone, show_push_notification=True))
        self._emit(ev.PairCode(code))
        return code


def _jid(jid: Any) -> str:
    user, server = getattr(jid, "User", ""), getattr(jid, "Server", "")
    device = getattr(jid, "Device", 0)
    return f"{user}:{device}@{server}" if device else f"{user}@{server}"


class NeonizeBackend:
    def __init__(self) -> None:
        media_tools.silence_neonize_notice()  # else one warning per worker process

    def client(self, company_id: str, store: Path, emit: Emit) -> NeonizeClient:
        return NeonizeClient(company_id, store, emit)

    def crash_process(self, store: Path | None) -> None:
        """neonize's real Go panic: ``get_me()`` on a client that never connected."""
        from neonize.client import NewClient

        NewClient(str(store or ":memory:"), uuid="wapool-drill-crash").get_me()
