"""A worker process: hosts up to WAPOOL_COMPANIES_PER_WORKER WhatsApp clients.

    python -m wapool.supervisor.worker_main neonize
    python -m wapool.supervisor.worker_main simulated [CHURN_PER_SECOND [instant|qr [SERVER NODE
                                                      [INBOUND_PER_SECOND]]]]

(``SERVER``: the simulated WhatsApp server's socket, or ``-`` for none; ``NODE``: the daemon's
name, which the server records with each connection.)

Commands arrive on stdin, events and heartbeats leave on stdout (``protocol``). Client handlers
only put events on a queue; one writer thread sends them. A neonize Go panic kills this process
and only this process: the main process restarts its shard. A worker dies with the daemon that
started it (``PR_SET_PDEATHSIG``): a daemon killed with SIGKILL leaves no client connected
behind it while its successor takes over.

A client whose store failed (``StoreFailed``) is not reused: the next ``start`` builds a new one,
so it opens the store afresh (a restore replaces the file; neonize keeps its own handle).
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

from wapool.messaging.inbox import InboxWriter, inbox_path
from wapool.messaging.model import InboundMessage, Receipt
from wapool.observability.redact import describe_error
from wapool.supervisor import protocol
from wapool.supervisor.worker_sends import SendQueues
from wapool.whatsapp.events import ConnectFailed, StoreFailed
from wapool.whatsapp.port import Backend, ClientEvent, WhatsAppClient
from wapool.whatsapp.sending import Outcome, SendResult

log = logging.getLogger("wapool.worker")
HEARTBEAT_SECONDS = 1.0
PR_SET_PDEATHSIG = 1
STOP_TIMEOUT = 10.0


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class Worker:
    def __init__(self, backend: Backend, out: BinaryIO) -> None:
        self._backend = backend
        self._out = out
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self._clients: dict[str, WhatsAppClient] = {}
        self._done = threading.Event()
        #: Companies whose client reported a failed store (written from client threads).
        self._store_failed: set[str] = set()
        self._sends = SendQueues(self.send)
        #: Each running company's inbox (written from client threads, inside their handlers).
        self._inboxes: dict[str, InboxWriter] = {}

    def send(self, message: bytes) -> None:
        self._outbox.put(message)

    def _writer(self) -> None:
        while (message := self._outbox.get()) is not None:
            self._out.write(message)
            self._out.flush()

    def _heartbeat(self) -> None:
        while not self._done.wait(HEARTBEAT_SECONDS):
            self.send(protocol.encode("heartbeat", fds=open_fds()))

    def handle(self, kind: str, fields: dict[str, Any]) -> None:
        company = fields.get("company", "")
        client = self._clients.get(company)
        if kind == "start":
            if client is not None and company in self._store_failed:
                self._store_failed.discard(company)
                client.stop(STOP_TIMEOUT)
                client = None
            if client is None:
                store = Path(fields["store"])
                if (stale := self._inboxes.pop(company, None)) is not None:
                    stale.close()  # a start that failed half-way before
                self._inboxes[company] = InboxWriter(inbox_path(store))

                def emit(event: ClientEvent, company: str = company) -> None:
                    if isinstance(event, InboundMessage | Receipt):
                        self.record(company, event)
                        return
                    if isinstance(event, StoreFailed):
                        self._store_failed.add(company)
                    self.send(protocol.encode_event(company, event))

                client = self._backend.client(company, store, emit)
                self._clients[company] = client
            client.start()
        elif kind == "send":
            self._submit(company, client, fields)
        elif kind == "mark_read" and client is not None:
            chat, sender = fields["chat"], fields["sender"]
            ids = [str(i) for i in fields["ids"]]
            self._sends.submit(company, client, lambda: client.mark_read(chat, sender, ids))
        elif kind == "stop" and client is not None:
            self._sends.close(company)
            clean = client.stop(STOP_TIMEOUT)
            del self._clients[company]
            if (inbox := self._inboxes.pop(company, None)) is not None:
                inbox.close()
            self.send(protocol.encode("stopped", company=company, clean=clean))
        elif kind == "logout" and client is not None:
            client.logout()
        elif kind == "pair_phone" and client is not None:
            client.pair_phone(fields["phone"])
        elif kind == "shutdown":
            self._done.set()
        elif kind == "drill_crash":
            self._backend.crash_process(Path(fields["store"]))
        elif client is None:
            self.send(protocol.encode("error", company=company, message=f"{kind}: no such client"))

    def _submit(self, company: str, client: WhatsAppClient | None, fields: dict[str, Any]) -> None:
        command = protocol.decode_send(fields)
        if client is None:  # nothing was sent: the main process keeps the message queued
            result = SendResult(command.id, Outcome.NOT_SENT, reason="not_connected: no client")
            self.send(protocol.encode_send_result(company, result))
            return
        self._sends.submit(company, client, command)

    def record(self, company: str, event: InboundMessage | Receipt) -> None:
        """Write an inbound event to the company's inbox (durable on return), then tell the
        main process. Runs on the client's handler thread; a failed write is reported and the
        event is lost (whatsmeow has acknowledged it already: docs/messaging.md)."""
        inbox = self._inboxes.get(company)
        try:
            if inbox is None:
                raise RuntimeError("no inbox open for this company")
            seq = inbox.append(event)
        except Exception as exc:  # a full disk, a broken file: say so, never crash the handler
            log.error(
                "inbox_write_failed", extra={"company": company, "error": describe_error(exc)}
            )
            self.send(protocol.encode("error", company=company, message="inbox write failed"))
            return
        if seq is not None:
            messages = 1 if isinstance(event, InboundMessage) else 0
            self.send(protocol.encode("inbox", company=company, seq=seq, messages=messages))

    def serve(self, commands: BinaryIO) -> None:
        writer = threading.Thread(target=self._writer, daemon=True)
        writer.start()
        threading.Thread(target=self._heartbeat, daemon=True).start()
        self.send(protocol.encode("hello", pid=os.getpid()))
        for line in commands:
            kind, fields = "", dict[str, Any]()
            try:
                kind, fields = protocol.decode(line, protocol.MAX_COMMAND_LINE)
                self.handle(kind, fields)
            except protocol.ProtocolError as exc:
                log.warning("bad_command", extra={"error": str(exc)})
            except Exception as exc:  # a client call failed: report it, keep serving
                company = str(fields.get("company", ""))
                self.send(protocol.encode("error", company=company, message=str(exc)))
                if kind == "start":
                    # The session waits for its connect to settle (holding a slot of the
                    # connect gate): say it failed, so it is retried with backoff.
                    failed = ConnectFailed(f"client start failed: {describe_error(exc)}")
                    self.send(protocol.encode_event(company, failed))
            if self._done.is_set():
                break
        for company, client in list(self._clients.items()):
            self.send(protocol.encode("stopped", company=company, clean=client.stop(STOP_TIMEOUT)))
        self._done.set()
        self._outbox.put(None)
        writer.join(5)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``parent`` (the daemon) dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("pdeathsig_unavailable", extra={"errno": ctypes.get_errno()})
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _backend(name: str, args: list[str]) -> Backend:
    if name == "neonize":
        from wapool.whatsapp.neonize_adapter import NeonizeBackend

        return NeonizeBackend()
    from wapool.whatsapp.simulated import Script, ServerLink, SimulatedBackend

    churn = float(args[0]) if args else 1.0
    inbound = float(args[4]) if len(args) > 4 else 0.0
    script = Script(churn_per_second=churn, inbound_per_second=inbound)
    if len(args) > 1 and args[1] == "qr":
        # Staging drills of `wapool pair`: QR codes rotate every second until one is "scanned".
        script = Script(
            pair_with_qr=True, qr_rotations=3, qr_interval=1.0, churn_per_second=churn,
            inbound_per_second=inbound,
        )  # fmt: skip
    server = None
    if len(args) > 3 and args[2] != "-":
        server = ServerLink(Path(args[2]), args[3])
    return SimulatedBackend(script, server)


def main(argv: list[str]) -> int:
    from wapool.observability.logs import configure_logging

    configure_logging(os.environ.get("WAPOOL_LOG_LEVEL", "INFO"))
    if parent := os.environ.get(protocol.PARENT_ENV):
        die_with_parent(int(parent))
    backend = _backend(argv[0] if argv else "simulated", argv[1:])
    Worker(backend, sys.stdout.buffer).serve(sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
