"""The client side of the simulated WhatsApp server (``sim_server``), for simulated clients.

A ``SimLink`` is one device's connection: a blocking Unix socket and a reader thread that hands
what the server pushes to callbacks (``replaced``: another client took the device; ``closed``:
the server went away; ``pushed``: a receipt or an inbound message, see ``sim_messages``). ``server_stats`` asks a server what it recorded (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wapool.whatsapp.sending import Outcome, SendFailure
from wapool.whatsapp.sim_server import encode

log = logging.getLogger(__name__)

#: Seconds to wait for the server to answer a request.
REPLY_TIMEOUT = 5.0


class SimLinkError(ConnectionError):
    """The simulated server is unreachable or refused the request."""


class SimLink:
    def __init__(
        self,
        path: Path,
        on_replaced: Callable[[], None],
        on_closed: Callable[[str], None] = lambda _reason: None,
        on_push: Callable[[dict[str, Any]], None] = lambda _message: None,
    ) -> None:
        self._path = path
        self._on_replaced = on_replaced
        self._on_closed = on_closed
        self._on_push = on_push
        self._request_lock = threading.Lock()
        #: Around every write: a request and the reader's ``received`` must not interleave.
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._closing = threading.Event()
        self.conn_id: int | None = None

    def connect(self, device: str, company: str, node: str, pid: int) -> int:
        """Take ``device`` on the server (the older connection, if any, is replaced)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(REPLY_TIMEOUT)
        try:
            sock.connect(str(self._path))
        except OSError as exc:
            sock.close()
            raise SimLinkError(f"simulated WhatsApp server unreachable: {exc}") from None
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(target=self._read, name="sim-link", daemon=True)
        self._reader.start()
        reply = self._request(encode("connect", device=device, company=company, node=node, pid=pid))
        if reply.get("op") != "connected":
            self.close()
            raise SimLinkError(f"simulated WhatsApp server refused: {reply.get('message')}")
        self.conn_id = int(reply["conn"])
        return self.conn_id

    def send(self, message_id: str, to: str, body: str) -> str:
        """Send a message; return the WhatsApp id the server gave it."""
        if self._sock is None:
            raise SimLinkError("not connected to the simulated WhatsApp server")
        reply = self._request(encode("send", id=message_id, to=to, body=body))
        if reply.get("op") == "nack":
            raise SendFailure(Outcome.FAILED, f"not_on_whatsapp: {reply.get('error')}")
        if reply.get("op") != "ack" or reply.get("id") != message_id:
            raise SimLinkError(f"simulated WhatsApp server refused: {reply.get('message')}")
        return str(reply["wa_id"])

    def close(self) -> None:
        """Disconnect cleanly: returns once the server has let the device go (bounded)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        replaced = self._closing.is_set()
        self._closing.set()
        try:
            if not replaced:
                sock.sendall(encode("disconnect"))
            if self._reader is not None:
                self._reader.join(REPLY_TIMEOUT)  # the server answers, then closes
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # unblocks a reader the server left hanging
            sock.close()

    def _request(self, line: bytes) -> dict[str, Any]:
        sock = self._sock
        assert sock is not None
        with self._request_lock:  # one request at a time: replies come back in order
            try:
                with self._send_lock:
                    sock.sendall(line)
                return self._replies.get(timeout=REPLY_TIMEOUT)
            except (OSError, queue.Empty):
                raise SimLinkError("simulated WhatsApp server did not answer") from None

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        reason = "simulated WhatsApp server closed the connection"
        with sock.makefile("rb") as lines:
            try:
                for raw in lines:
                    message = json.loads(raw)
                    if message.get("op") == "replaced":
                        self._closing.set()
                        self._on_replaced()
                    elif message.get("op") in ("receipt", "message"):
                        self._pushed(sock, message)
                    elif message.get("op") != "disconnected":
                        self._replies.put(message)
            except (OSError, ValueError) as exc:
                reason = f"simulated WhatsApp server link failed: {exc}"
        if not self._closing.is_set():
            self._on_closed(reason)
        self._replies.put({"op": "error", "message": reason})

    def _pushed(self, sock: socket.socket, message: dict[str, Any]) -> None:
        """Hand a push to the client; for an inbound message, then tell the server it is
        ``received`` — only once the handler returned (the message is durable), as whatsmeow's
        receipt follows its handlers. A handler that fails sends nothing: the server pushes the
        message again at the next connection."""
        try:
            self._on_push(message)
        except Exception:
            log.exception("sim_push_handler_failed")
            return
        if message.get("op") == "message":
            with self._send_lock:
                sock.sendall(encode("received", id=str(message["id"])))


def server_stats(path: Path, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """What the server recorded: overlaps, connections per device, live devices, sends."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(encode("stats"))
        with sock.makefile("rb") as lines:
            reply: dict[str, Any] = json.loads(lines.readline())
    return reply
