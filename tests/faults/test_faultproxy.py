"""FaultProxy against a local echo server: every switch does what it says, and heal() undoes it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from unimq.testing.faultproxy import FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as fault_proxy:
        yield fault_proxy
    server.close()
    await server.wait_closed()


async def _open(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 2)


async def test_forwards_both_ways_one_upstream_per_client(proxy: FaultProxy) -> None:
    assert proxy.port > 0
    a, b = await _open(proxy), await _open(proxy)
    assert await _roundtrip(*a, b"hello") == b"hello"
    assert await _roundtrip(*b, b"x" * 200_000) == b"x" * 200_000
    assert proxy.connections == 2 and proxy.accepted == 2
    a[1].close()
    await asyncio.sleep(0.1)
    assert proxy.connections == 1


async def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    conn = await _open(proxy)
    proxy.latency(0.2)
    started = time.monotonic()
    assert await _roundtrip(*conn, b"ping") == b"ping"
    assert time.monotonic() - started >= 0.4  # 0.2 s there and 0.2 s back
    proxy.latency(0)
    started = time.monotonic()
    await _roundtrip(*conn, b"ping")
    assert time.monotonic() - started < 0.2


async def test_blackhole_holds_bytes_until_heal(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    proxy.blackhole()
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.3)
    assert proxy.connections == 1  # still open, just silent
    await proxy.heal()
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"held"


async def test_reset_all_sends_rst(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    await _roundtrip(reader, writer, b"a")
    await proxy.reset_all()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 2)
    assert proxy.connections == 0
    assert await _roundtrip(*await _open(proxy), b"again") == b"again"


async def test_drop_all_closes_cleanly(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    await _roundtrip(reader, writer, b"a")
    await proxy.drop_all()
    assert await asyncio.wait_for(reader.read(1), 2) == b""  # EOF, not an error
    assert proxy.connections == 0


async def test_refuse_then_accept_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    kept = await _open(proxy)
    await proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await _open(proxy)
    assert await _roundtrip(*kept, b"still") == b"still"  # refuse leaves open connections alone
    await proxy.accept()
    assert proxy.port == port
    assert await _roundtrip(*await _open(proxy), b"back") == b"back"


async def test_upstream_down_closes_the_client() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    async with FaultProxy("127.0.0.1", free) as proxy:
        reader, _ = await _open(proxy)
        assert await asyncio.wait_for(reader.read(1), 2) == b""


def test_url_rewriting() -> None:
    proxy = FaultProxy.for_url("amqp://guest:guest@127.0.0.1:5672/vh?heartbeat=5", port=4000)
    assert proxy.upstream == ("127.0.0.1", 5672)
    assert proxy.url("amqp://guest:guest@127.0.0.1:5672/vh?heartbeat=5") == "amqp://guest:guest@127.0.0.1:4000/vh?heartbeat=5"
    sqs = "sqs://?endpoint_url=http://127.0.0.1:9324&region=us-east-1"
    assert FaultProxy.for_url(sqs, port=4001).url(sqs) == "sqs://?endpoint_url=http://127.0.0.1:4001&region=us-east-1"
    with pytest.raises(ValueError, match="no host"):
        FaultProxy.for_url("memory://x")
