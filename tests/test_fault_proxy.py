"""The fault proxy itself, against a plain echo server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from wapool.testing.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 2)
    finally:
        writer.close()


async def _drain_and_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(1), 2)


async def test_forwards_both_ways(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        assert await _roundtrip(proxy.port) == b"ping"


async def test_cut_resets_live_connections_only(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        proxy.cut()
        writer.write(b"b")
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await _drain_and_read(reader, writer)
        writer.close()
        assert await _roundtrip(proxy.port) == b"ping"


async def test_refuse_then_restore(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        await proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.restore()
        assert await _roundtrip(proxy.port) == b"ping"


async def test_blackhole_accepts_but_never_answers(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.blackhole()
        writer.write(b"lost")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        with pytest.raises(TimeoutError):
            await _roundtrip(proxy.port)  # new connections are accepted and swallowed too
        await proxy.restore()
        writer.close()
        assert await _roundtrip(proxy.port) == b"ping"


async def test_delay_holds_each_direction_and_pipelines(echo_port: int) -> None:
    """A delay each way costs twice it per round trip; chunks in flight are not serialised."""
    async with FaultProxy("127.0.0.1", echo_port, delay=0.1) as proxy:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await _roundtrip(proxy.port) == b"ping"
        assert loop.time() - started >= 0.2

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = loop.time()
        for n in range(10):
            writer.write(b"%d" % n)
            await writer.drain()
            await asyncio.sleep(0.02)
        echoed = await asyncio.wait_for(reader.readexactly(10), 5)
        took = loop.time() - started
        writer.close()
        assert echoed == b"0123456789"  # in order
        assert took >= 0.2 + 9 * 0.02
        assert took < 10 * 0.2  # serialised, ten round trips would take at least 2 s

        proxy.delay = 0.0  # changed on the fly
        started = loop.time()
        assert await _roundtrip(proxy.port) == b"ping"
        assert loop.time() - started < 0.2
