"""An asyncio TCP proxy that makes network faults real, for tests and drills.

Put it between wapool and PostgreSQL, then:

* ``cut()``       reset every live connection (RST), keep accepting new ones;
* ``refuse()``    reset live connections and refuse new ones (nothing listens);
* ``blackhole()`` keep accepting, but never forward a byte either way (a dead route);
* ``restore()``   back to a transparent proxy.

``delay`` (seconds, settable at any time) holds every chunk that long in each direction before
it is passed on, as a database in another datacentre would: a round trip costs twice the delay,
and data in flight is pipelined, not serialised (the order is kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from enum import Enum


class Mode(Enum):
    FORWARD = "forward"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


class FaultProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        delay: float = 0.0,
    ) -> None:
        self.target = (target_host, target_port)
        #: Seconds each chunk is held, each way.
        self.delay = delay
        self.listen_host = listen_host
        self.port = 0
        self.mode = Mode.FORWARD
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.accepted = 0

    async def start(self) -> None:
        await self._listen()

    async def close(self) -> None:
        await self._stop_listening()
        self._reset_all()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def cut(self) -> None:
        """Reset every live connection; new ones still go through."""
        self._reset_all()

    async def refuse(self) -> None:
        """Reset live connections and refuse new ones (connection refused)."""
        self.mode = Mode.REFUSE
        await self._stop_listening()
        self._reset_all()

    async def blackhole(self) -> None:
        """Accept and hold connections, forwarding nothing, in both directions."""
        self.mode = Mode.BLACKHOLE
        if self._server is None:
            await self._listen()

    async def restore(self) -> None:
        """Forward transparently again; connections held by a blackhole are reset."""
        previous, self.mode = self.mode, Mode.FORWARD
        if previous is Mode.BLACKHOLE:
            self._reset_all()
        if self._server is None:
            await self._listen()

    @property
    def live_connections(self) -> int:
        return len(self._links)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.port or 0, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _reset_all(self) -> None:
        for link in list(self._links):
            link.reset()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        link = _Link(writer)
        self._links.add(link)
        try:
            if self.mode is Mode.BLACKHOLE:
                await link.closed.wait()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                link.reset()
                return
            link.upstream = up_writer
            await asyncio.gather(
                self._pump(reader, up_writer, link), self._pump(up_reader, writer, link)
            )
        finally:
            self._links.discard(link)
            link.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = loop.create_task(self._deliver(pending, writer, link))
        try:
            while not link.closed.is_set():
                data = await reader.read(65536)
                if not data or link.closed.is_set():
                    break
                if self.mode is Mode.BLACKHOLE:
                    await link.closed.wait()  # swallow it and go silent
                    break
                pending.put_nowait((loop.time() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            pending.put_nowait(None)  # what was read still arrives (late), then the end
            try:
                await sender
            except asyncio.CancelledError:
                sender.cancel()
                raise
            finally:
                link.close()

    async def _deliver(
        self,
        pending: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        link: _Link,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await pending.get()) is not None:
                due, data = item
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if link.closed.is_set() or self.mode is Mode.BLACKHOLE:
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            link.close()


class _Link:
    def __init__(self, downstream: asyncio.StreamWriter) -> None:
        self.downstream = downstream
        self.upstream: asyncio.StreamWriter | None = None
        self.closed = asyncio.Event()

    def reset(self) -> None:
        """Close both sides with RST (SO_LINGER 0), as a crashed peer or middlebox would."""
        for writer in (self.downstream, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self.closed.set()

    def close(self) -> None:
        if self.closed.is_set() and self.downstream.transport.is_closing():
            return
        for writer in (self.downstream, self.upstream):
            if writer is not None:
                writer.transport.close()
        self.closed.set()
