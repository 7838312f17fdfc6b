"""A webhook receiver for the inbound benchmark, in a process of its own, as cheap as possible.

The benchmark measures wapool, not a receiver: a plain asyncio protocol (HTTP/1.1 keep-alive,
``Content-Length`` bodies, ``204`` answers) notes the arrival time of each request as its last
bytes arrive, before anything is parsed, and keeps the raw bodies; they are decoded only at the
end. An aiohttp server in the benchmark's own process cost a good part of a core at 1,000
requests a second and added its own queueing to the figures.

    python bench/webhook_receiver.py PORT OUT

Prints ``ready`` once listening. Every 0.2 s and at SIGTERM it appends to OUT one line per
request received since: its arrival time (Unix seconds), a space, the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

records: list[tuple[float, bytes]] = []


class Receiver(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            records.append((now, bytes(self.buffer[end + 4 : end + 4 + length])))
            del self.buffer[: end + 4 + length]
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


def flush(out: str) -> None:
    taken = records[:]
    del records[: len(taken)]
    with open(out, "ab") as file:  # a compact JSON body holds no newline
        file.writelines(b"%r %s\n" % (arrival, body) for arrival, body in taken)


async def main(port: int, out: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await loop.create_server(Receiver, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
        flush(out)
    server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
