"""The simulated WhatsApp server: one live connection per device, and a record of every overlap.

    python -m wapool.whatsapp.sim_server SOCKET [--state FILE]

Shared by every daemon on a machine (tests, staging, drills), so "never two clients for one
company" is counted, not inferred from logs. Like WhatsApp, it allows one live connection per
device: a second ``connect`` for a device that is connected is recorded as an **overlap**, the
older connection gets ``replaced`` (whatsmeow's ``StreamReplaced``) and is closed.

Protocol v1 on a Unix socket: one JSON object per line, field ``op``.

client -> server
    connect {device, company, node, pid}  ->  connected {conn}
    disconnect {}                         ->  disconnected {}, then the server closes
    send {id, to, body}                   ->  ack {id, wa_id, ts}   (a repeated id is a
                                              duplicate; receipts and the echo contact's
                                              replies follow: ``sim_messages``)
                                          ->  nack {id, error}   (recipient not on WhatsApp:
                                              numbers starting with 999)
                                          ->  nothing, for numbers starting with 998 (a send
                                              whose answer is lost: drills of ``uncertain``)
    stats {}                              ->  stats {overlaps, connections, live, sends,
                                                     duplicates, received, echoes, inbound}
    deliver {device, chat, text[, sender]} -> queued {id}   (from anyone: a test, a contact)
    received {id}                         ->  (nothing)  the device's client has the message
server -> client
    replaced {}       another connection took this device; the server closes this one
    receipt {...} / message {...}   see ``sim_messages``
    error {message}   the line was not understood; the connection carries on

Messages queued with ``deliver`` behave as WhatsApp's do: pushed to the device's live
connection (at once, or when it connects), and pushed again at every connection until the
client answers ``received`` — which a client sends only once the message is durable.

Everything recorded is kept in memory and, with ``--state``, appended to a JSON-lines journal
(one object per record, field ``kind``; connects and disconnects carry their time ``at``, so a
test can measure each device's downtime) that a test can read after the server stopped. Lines
are bounded (``MAX_LINE``); bad input is answered with ``error`` and never stops the server.

One module because it is one small program run on its own (``python -m``): protocol,
bookkeeping and journal are read together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from wapool.whatsapp.sim_messages import Delays, Deliveries, whatsapp_id

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
#: Recipients whose number starts so are "not on WhatsApp": a send to them is refused (nack).
NOT_ON_WHATSAPP_PREFIX = "999"
#: Sends to numbers starting so are recorded but never answered (a send lost in flight).
NO_ANSWER_PREFIX = "998"

#: op -> required fields and their types.
REQUESTS: dict[str, dict[str, type]] = {
    "connect": {"device": str, "company": str, "node": str, "pid": int},
    "disconnect": {},
    "send": {"id": str, "to": str, "body": str},
    "stats": {},
    "deliver": {"device": str, "chat": str, "text": str},
    "received": {"id": str},
}


class BadRequest(ValueError):
    """A line that does not follow the protocol; answered with ``error``."""


def encode(op: str, **fields: Any) -> bytes:
    return json.dumps({"op": op, **fields}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> tuple[str, dict[str, Any]]:
    """Parse and validate one request line; return (op, fields)."""
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("not JSON") from None
    if not isinstance(message, dict):
        raise BadRequest("not a JSON object")
    op = message.get("op")
    if not isinstance(op, str) or op not in REQUESTS:
        raise BadRequest(f"unknown op {op!r}")
    for name, expected in REQUESTS[op].items():
        value = message.get(name)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise BadRequest(f"{op}: field {name!r} missing or not {expected.__name__}")
    return op, message


@dataclass
class Connection:
    id: int
    writer: asyncio.StreamWriter
    device: str | None = None
    company: str = ""
    node: str = ""
    pid: int = 0
    since: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {"conn": self.id, "company": self.company, "node": self.node, "pid": self.pid}


@dataclass
class Record:
    """What the server saw; ``stats`` reports it and the journal keeps it."""

    overlaps: list[dict[str, Any]] = field(default_factory=list)
    connections: Counter[str] = field(default_factory=Counter)
    sends: Counter[str] = field(default_factory=Counter)
    send_ids: set[tuple[str, str]] = field(default_factory=set)
    #: Messages per recipient JID.
    received: Counter[str] = field(default_factory=Counter)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    #: device -> inbound messages queued with ``deliver`` / acknowledged by a client.
    queued: Counter[str] = field(default_factory=Counter)
    acked: Counter[str] = field(default_factory=Counter)


class SimServer:
    def __init__(
        self,
        journal: TextIO | None = None,
        clock: Callable[[], float] = time.time,
        delays: Delays | None = None,
    ):
        self.live: dict[str, Connection] = {}
        self.deliveries = Deliveries(self._push, encode, clock, delays or Delays())
        self.record = Record()
        self._journal = journal
        self._clock = clock
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        #: device -> inbound messages not yet acknowledged, in order.
        self.pending: dict[str, dict[str, dict[str, Any]]] = {}
        self._handlers: dict[str, Callable[[Connection, dict[str, Any]], bytes]] = {
            "connect": self._connect, "disconnect": self._disconnect,
            "send": self._send, "stats": self._stats,
            "deliver": self._deliver, "received": self._received,
        }  # fmt: skip

    async def serve(self, path: Path) -> asyncio.AbstractServer:
        _claim_socket(path)
        server = await asyncio.start_unix_server(self._handle, path, limit=MAX_LINE)
        os.chmod(path, 0o600)  # only this user's daemons may connect
        return server

    def stats(self) -> dict[str, Any]:
        rec = self.record
        return {
            "overlaps": rec.overlaps,
            "connections": dict(rec.connections),
            "live": {d: c.describe() | {"since": c.since} for d, c in self.live.items()},
            "sends": dict(rec.sends),
            "duplicates": rec.duplicates,
            "received": dict(rec.received),
            "echoes": self.deliveries.echoes,
            "inbound": {
                d: {"queued": rec.queued[d], "acked": rec.acked[d],
                    "pending": len(self.pending.get(d, {}))}
                for d in rec.queued
            },
        }  # fmt: skip

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(next(self._ids), writer)
        try:
            while not writer.is_closing():
                line = await _read_line(reader)
                if line is None:
                    break
                reply = self._answer(conn, line)
                if reply and not writer.is_closing():
                    writer.write(reply)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._drop(conn, "eof")
            writer.close()

    def _answer(self, conn: Connection, line: bytes) -> bytes:
        if len(line) > MAX_LINE:
            return encode("error", message=f"line longer than {MAX_LINE} bytes")
        try:
            op, fields = decode(line)
        except BadRequest as exc:
            return encode("error", message=str(exc))
        return self._handlers[op](conn, fields)

    def _connect(self, conn: Connection, fields: dict[str, Any]) -> bytes:
        if conn.device is not None:
            return encode("error", message=f"this connection already drives {conn.device}")
        conn.device, conn.company = fields["device"], fields["company"]
        conn.node, conn.pid, conn.since = fields["node"], fields["pid"], self._clock()
        older = self.live.get(conn.device)
        if older is not None:
            self._overlap(older, conn)
        self.live[conn.device] = conn
        self.record.connections[conn.device] += 1
        self._journal_write("connect", device=conn.device, at=conn.since, **conn.describe())
        reply = encode("connected", conn=conn.id)
        device = conn.device
        asyncio.get_running_loop().call_soon(self.deliveries.connected, device)
        asyncio.get_running_loop().call_soon(self._push_pending, device)
        return reply

    def _push_pending(self, device: str) -> None:
        for message in list(self.pending.get(device, {}).values()):
            if not self._push(device, encode("message", **message)):
                return

    def _deliver(self, _conn: Connection, fields: dict[str, Any]) -> bytes:
        device = fields["device"]
        message = {
            "id": f"SRV{next(self._message_ids):09d}", "chat": fields["chat"],
            "sender": str(fields.get("sender") or fields["chat"]), "text": fields["text"],
            "ts": self._clock(),
        }  # fmt: skip
        self.pending.setdefault(device, {})[message["id"]] = message
        self.record.queued[device] += 1
        self._push(device, encode("message", **message))  # else at its next connect
        return encode("queued", id=message["id"])

    def _received(self, conn: Connection, fields: dict[str, Any]) -> bytes:
        device = conn.device or ""
        if self.pending.get(device, {}).pop(fields["id"], None) is not None:
            self.record.acked[device] += 1
            self._journal_write("inbound_acked", device=device, id=fields["id"])
        return b""

    def _overlap(self, older: Connection, newer: Connection) -> None:
        overlap = {
            "device": newer.device, "company": newer.company, "old": older.describe(),
            "new": newer.describe(), "at": self._clock(),
        }  # fmt: skip
        self.record.overlaps.append(overlap)
        self._journal_write("overlap", **overlap)
        log.warning("overlap", extra={"device": newer.device, "old": older.id, "new": newer.id})
        older.device = None  # its drop must not end the newer connection's session
        older.writer.write(encode("replaced"))
        older.writer.close()

    def _disconnect(self, conn: Connection, _fields: dict[str, Any]) -> bytes:
        self._drop(conn, "disconnect")
        conn.writer.write(encode("disconnected"))
        conn.writer.close()
        return b""

    def _send(self, conn: Connection, fields: dict[str, Any]) -> bytes:
        device = conn.device or ""
        if str(fields["to"]).startswith(NOT_ON_WHATSAPP_PREFIX):
            return encode("nack", id=fields["id"], error="the recipient is not on WhatsApp")
        key = (device, fields["id"])
        if key in self.record.send_ids:
            duplicate = {"device": device, "id": fields["id"], "at": self._clock()}
            self.record.duplicates.append(duplicate)
            self._journal_write("duplicate", **duplicate)
        self.record.send_ids.add(key)
        self.record.sends[device] += 1
        self.record.received[fields["to"]] += 1
        wa_id = whatsapp_id()
        if str(fields["to"]).startswith(NO_ANSWER_PREFIX):
            self._journal_write("send", device=device, id=fields["id"], to=fields["to"],
                                wa_id=None, at=self._clock())  # fmt: skip
            return b""
        self._journal_write(
            "send", device=device, id=fields["id"], to=fields["to"], wa_id=wa_id, at=self._clock()
        )
        if device:
            self.deliveries.sent(device, fields, wa_id)
        return encode("ack", id=fields["id"], wa_id=wa_id, ts=self._clock())

    def _push(self, device: str, line: bytes) -> bool:
        conn = self.live.get(device)
        if conn is None or conn.writer.is_closing():
            return False
        conn.writer.write(line)
        return True

    def _stats(self, _conn: Connection, _fields: dict[str, Any]) -> bytes:
        return encode("stats", **self.stats())

    def _drop(self, conn: Connection, how: str) -> None:
        device = conn.device
        if device is not None and self.live.get(device) is conn:
            del self.live[device]
            self._journal_write(
                "disconnect", device=device, how=how, at=self._clock(), **conn.describe()
            )
        conn.device = None

    def _journal_write(self, kind: str, **fields: Any) -> None:
        if self._journal is not None:
            self._journal.write(json.dumps({"kind": kind, **fields}) + "\n")
            self._journal.flush()


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line (None at the end); an over-long line comes back cut, its rest skipped."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial or None
    except asyncio.LimitOverrunError as exc:
        head = await reader.readexactly(exc.consumed)  # longer than MAX_LINE
    while True:  # skip to the end of that line, keeping the connection
        try:
            await reader.readuntil(b"\n")
            return head
        except asyncio.IncompleteReadError:
            return head
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)


def _claim_socket(path: Path) -> None:
    """Remove a socket left by a dead server; refuse to steal one a live server listens on."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SystemExit(f"a simulated WhatsApp server already listens on {path}")


async def _serve(path: Path, journal: TextIO | None, delays: Delays) -> None:
    server = SimServer(journal, delays=delays)
    listener = await server.serve(path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("sim_server_ready", extra={"socket": str(path)})
    await stop.wait()
    listener.close()
    for conn in list(server.live.values()):
        conn.writer.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(listener.wait_closed(), 5)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log.info("sim_server_stopped", extra={"overlaps": len(server.record.overlaps)})


def main(argv: list[str]) -> int:
    from wapool.observability.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m wapool.whatsapp.sim_server")
    parser.add_argument("socket", type=Path, help="Unix socket to listen on")
    parser.add_argument("--state", type=Path, help="append every record to this JSON-lines file")
    parser.add_argument(
        "--receipt-delays",
        default="0.05,0.2",
        metavar="DELIVERED[,READ]",
        help="seconds after a send until its delivered (and read) receipt",
    )
    parser.add_argument(
        "--echo-delay", type=float, default=0.05, help="seconds until the echo contact answers"
    )
    args = parser.parse_args(argv)
    try:
        delays = Delays.parse(args.receipt_delays, args.echo_delay)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging("INFO")
    journal = open(args.state, "a", encoding="utf-8") if args.state else None  # noqa: SIM115
    try:
        asyncio.run(_serve(args.socket, journal, delays))
    finally:
        if journal is not None:
            journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
