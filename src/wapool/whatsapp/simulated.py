"""The simulated backend (``WAPOOL_WHATSAPP_BACKEND=simulated``): same port, no WhatsApp.

For staging, drills and benchmarks. A client pairs at once (writing a realistic device row) or
after a scripted QR, then writes whatsmeow-shaped key churn into its working store at a steady
rate (session updates, sender keys, message secrets, consumed pre-keys, app state) and plays a
scripted sequence of events, each after a delay.

With a simulated WhatsApp server (``sim_server``; ``WAPOOL_SIMULATED_SERVER``), a client takes
its device there once the JID is known and lets it go when it stops; the server's ``replaced``
ends the client's run with ``StreamReplaced``, as WhatsApp's ``conflict: replaced`` does.
Without one, each client works alone (nothing notices two clients on one device).

A store that fails under a client (corrupt, unreadable, full) ends its run with ``StoreFailed``
naming the fault, as a failing store would stop whatsmeow; wapool then repairs and restarts it.

One module over 250 lines: the simulated client mirrors the neonize adapter's whole surface
(connect, pairing, churn, messages, store faults) so tests drive both the same way.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wapool.messaging.model import InboundMessage, Receipt
from wapool.observability.redact import describe_error
from wapool.store.faults import SQLITE_ERRORS, StoreFault, classify
from wapool.store.working_store import connect
from wapool.testing.whatsmeow_writes import WhatsmeowWriter
from wapool.whatsapp import events as ev
from wapool.whatsapp.port import Emit
from wapool.whatsapp.sending import Outcome, SendCommand, SendFailure, SendResult
from wapool.whatsapp.sim_link import SimLink, SimLinkError
from wapool.whatsapp.sim_messages import whatsapp_id


@dataclass(frozen=True)
class Script:
    """What a simulated session does: pair how, churn how fast, then these events."""

    pair_with_qr: bool = False
    #: With ``pair_with_qr``: QR codes shown (one every ``qr_interval`` s) before the "scan".
    qr_rotations: int = 1
    qr_interval: float = 0.05
    churn_per_second: float = 1.0
    #: Inbound text messages per second from a few simulated contacts (0: none).
    inbound_per_second: float = 0.0
    #: Simulated contacts the inbound messages come from (one chat each).
    contacts: int = 5
    #: (delay in seconds, event) pairs, played in order after connecting.
    events: Sequence[tuple[float, ev.WhatsAppEvent]] = field(default_factory=tuple)
    seed: int | None = None


@dataclass(frozen=True)
class ServerLink:
    """Where the simulated WhatsApp server listens, and who connects (as the server records)."""

    socket: Path
    node: str


class SimulatedClient:
    def __init__(
        self, company_id: str, store: Path, emit: Emit, script: Script, server: ServerLink | None
    ) -> None:
        self.company_id = company_id
        self._store = store
        self._emit = emit
        self._script = script
        self._server = server
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: WhatsmeowWriter | None = None
        self._lock = threading.Lock()
        self._phone_pairing = threading.Event()
        #: Set while the session is connected (and, with a server, holds its link).
        self._connected = threading.Event()
        self.read_marked = 0
        self._link: SimLink | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._guarded, name=f"sim-{self.company_id}", daemon=True
        )
        self._thread.start()

    def _guarded(self) -> None:
        try:
            self._run()
        except ConnectionError as exc:  # the simulated server, not the store
            self._emit(ev.Disconnected(describe_error(exc)))
        except (*SQLITE_ERRORS, StoreFault, OSError) as exc:
            self._emit(ev.StoreFailed(describe_error(exc), classify(exc).value))

    def _run(self) -> None:
        conn = connect(self._store)
        rng = random.Random(self._script.seed)  # noqa: S311 - simulated traffic
        writer = WhatsmeowWriter(conn, rng)
        self._writer = writer
        try:
            row = conn.execute("SELECT jid FROM whatsmeow_device LIMIT 1").fetchone()
            if row is None:
                if self._script.pair_with_qr:
                    for n in range(self._script.qr_rotations):
                        if self._phone_pairing.is_set():
                            break
                        self._emit(ev.QrCode(f"2@simulated-{self.company_id}-{n}"))
                        if self._stop.wait(self._script.qr_interval):
                            return
                with self._lock:
                    jid = writer.pair()
                self._emit(ev.Paired(jid))
            else:
                writer.jid = str(row[0])
            self._online(writer)
        finally:
            self._writer = None
            conn.close()

    def _online(self, writer: WhatsmeowWriter) -> None:
        """Hold the device on the server (if any) while the session plays."""
        link = None
        if self._server is not None:
            link = SimLink(self._server.socket, self._replaced, self._server_lost, self._pushed)
            try:
                link.connect(writer.jid, self.company_id, self._server.node, os.getpid())
            except SimLinkError as exc:
                self._emit(ev.ConnectFailed(str(exc)))
                return
        inbound = self._start_inbound(writer.jid)
        try:
            self._link = link
            self._connected.set()
            self._emit(ev.Connected())
            self._play(writer)
        finally:
            self._connected.clear()
            self._link = None
            self._stop.set()
            if inbound is not None:
                inbound.join(5)
            if link is not None:
                link.close()

    def send(self, command: SendCommand) -> SendResult:
        """Through the simulated server when there is one (it records every send, so a repeat
        is counted); alone, any send while connected succeeds with a generated id."""
        link = self._link
        if not self._connected.is_set() or (self._server is not None and link is None):
            return SendResult(command.id, Outcome.NOT_SENT, reason="not_connected: simulated")
        if link is None:
            return SendResult(command.id, Outcome.SENT, whatsapp_id=whatsapp_id())
        try:
            wa_id = link.send(command.id, command.to, command.text)
        except SendFailure as exc:
            return SendResult(command.id, exc.outcome, reason=exc.reason)
        except SimLinkError as exc:  # the request may have reached the server
            return SendResult(command.id, Outcome.UNCERTAIN, reason=str(exc))
        return SendResult(command.id, Outcome.SENT, whatsapp_id=wa_id)

    def mark_read(self, chat: str, sender: str, message_ids: list[str]) -> None:
        """Counted only: the simulated contacts do not look at read receipts."""
        if not self._connected.is_set():
            raise RuntimeError("mark_read needs a live connection")
        self.read_marked += len(message_ids)
        del chat, sender

    def _pushed(self, message: dict[str, Any]) -> None:
        """A receipt or an inbound message (the echo contact's answer) from the simulated
        server, handed over as whatsmeow's handlers would."""
        if message.get("op") == "receipt":
            chat = str(message["chat"])
            self._emit(Receipt(
                company=self.company_id, chat=chat, sender=chat, status=str(message["status"]),
                message_ids=tuple(str(i) for i in message["ids"]), timestamp=float(message["ts"]),
            ))  # fmt: skip
        elif message.get("op") == "message":
            self._emit(InboundMessage(
                company=self.company_id, message_id=str(message["id"]),
                chat=str(message["chat"]), sender=str(message["sender"]),
                timestamp=float(message["ts"]), kind="text", push_name="Echo",
                text=str(message["text"]), quoted_id=str(message.get("quoted") or ""),
            ))  # fmt: skip

    # -- inbound messages ------------------------------------------------------------------------

    def _start_inbound(self, own_jid: str) -> threading.Thread | None:
        if self._script.inbound_per_second <= 0:
            return None
        thread = threading.Thread(
            target=self._inbound, args=(own_jid,), name=f"sim-in-{self.company_id}", daemon=True
        )
        thread.start()
        return thread

    def _inbound(self, _own_jid: str) -> None:
        """Random texts at the scripted rate, each handed over as whatsmeow's handler would:
        ``emit`` returns once the message is in the inbox."""
        interval = 1.0 / self._script.inbound_per_second
        run = uuid.uuid4().hex[:8].upper()
        rng = random.Random(self._script.seed)  # noqa: S311 - simulated traffic
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += interval
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            n += 1
            contact = f"5511900000{rng.randrange(self._script.contacts):03d}@s.whatsapp.net"
            self._emit(
                InboundMessage(
                    company=self.company_id, message_id=f"SIM{run}{n:08d}", chat=contact,
                    sender=contact, timestamp=time.time(), kind="text",
                    push_name="Simulated contact", text=f"sim {run}:{n}",
                )
            )  # fmt: skip

    def _replaced(self) -> None:
        self._stop.set()
        self._emit(ev.StreamReplaced())

    def _server_lost(self, reason: str) -> None:
        self._stop.set()
        self._emit(ev.Disconnected(reason))

    def _play(self, writer: WhatsmeowWriter) -> None:
        script = list(self._script.events)
        interval = (
            1.0 / self._script.churn_per_second if self._script.churn_per_second > 0 else None
        )
        elapsed = 0.0
        while not self._stop.is_set():
            wait = interval if interval is not None else 0.1
            if script:
                wait = min(wait, max(0.0, script[0][0] - elapsed))
            if self._stop.wait(wait):
                return
            elapsed += wait
            while script and script[0][0] <= elapsed:
                _, event = script.pop(0)
                self._emit(event)
                if isinstance(event, ev.LoggedOut):
                    with self._lock:
                        writer.logout()
                    return
                if isinstance(event, ev.StreamReplaced | ev.ClientOutdated | ev.Disconnected):
                    return
            if interval is not None:
                with self._lock:
                    writer.random_transaction()

    def stop(self, timeout: float) -> bool:
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def logout(self) -> None:
        writer = self._writer
        if writer is None:
            raise RuntimeError("logout needs a live connection")
        with self._lock:
            writer.logout()
        self._emit(ev.LoggedOut("logout requested"))
        self._stop.set()

    def pair_phone(self, phone: str) -> str:
        code = f"SIM{abs(hash((self.company_id, phone))) % 10**5:05d}"
        self._emit(ev.PairCode(code))
        self._phone_pairing.set()  # the "user" types the code: pairing completes
        return code


class SimulatedBackend:
    def __init__(self, script: Script | None = None, server: ServerLink | None = None) -> None:
        self.script = script or Script()
        self.server = server

    def client(self, company_id: str, store: Path, emit: Emit) -> SimulatedClient:
        return SimulatedClient(company_id, store, emit, self.script, self.server)

    def crash_process(self, _store: Path | None) -> None:
        os.abort()
