"""A TCP proxy on loopback that injects network faults between a client and a broker.

Point a unimq URL at the proxy (:meth:`FaultProxy.url`) and switch faults at run time: add
``latency``, ``blackhole`` (stop forwarding; bytes pile up in the kernel buffers), ``reset_all``
(every connection gets an RST), ``drop_all`` (every connection is closed cleanly), ``refuse``
(the listener closes; ``accept`` reopens it on the same port), and ``heal``.

Each client connection gets its own upstream connection, so a fault hits exactly the
connections a client holds, the way a real network fault would. Standard library only; works
for any TCP protocol (AMQP, Kafka, Redis, NATS, HTTP). Kafka clients reconnect to the address
the broker advertises, so Kafka needs a listener that advertises the proxy's port; a single NATS
server advertises no other URLs unless clustered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from unimq.testing.brokers import address

CHUNK = 64 * 1024


@dataclass(eq=False)
class _Pair:
    """One proxied connection: the client's streams, the upstream's, and the two pump tasks."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """An asyncio TCP proxy from ``127.0.0.1:port`` to ``upstream_host:upstream_port``.

    Use as ``async with FaultProxy(host, port) as proxy:``; ``port=0`` picks a free port, kept
    across ``refuse()``/``accept()``. All switches take effect at once, for existing and new
    connections alike.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._latency = 0.0
        self.accepted = 0  #: client connections accepted so far

    @classmethod
    def for_url(cls, url: str, *, port: int = 0) -> FaultProxy:
        """A proxy in front of the broker that ``url`` connects to (SQS: its ``endpoint_url``)."""
        where = address(url)
        if where is None:
            raise ValueError(f"{url!r} names no host and port to proxy")
        return cls(*where, port=port)

    @property
    def port(self) -> int:
        """The listening port (known once started)."""
        return self._port

    @property
    def connections(self) -> int:
        """Client connections currently proxied."""
        return len(self._pairs)

    def url(self, url: str) -> str:
        """``url`` with its broker address (or SQS ``endpoint_url``) replaced by this proxy's."""
        here = f"{self.host}:{self._port}"
        upstream = f"{self.upstream[0]}:{self.upstream[1]}"
        if upstream in url:
            return url.replace(upstream, here)
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{here}"))

    # Lifecycle

    async def start(self) -> FaultProxy:
        await self.accept()
        return self

    async def close(self) -> None:
        """Stop listening and close every connection."""
        await self.refuse()
        await self.drop_all()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # Faults

    def latency(self, seconds: float) -> None:
        """Delay every chunk forwarded, in both directions, by ``seconds``."""
        self._latency = max(0.0, seconds)

    def blackhole(self) -> None:
        """Stop forwarding: connections stay open, nothing gets through, bytes pile up."""
        self._flowing.clear()

    async def reset_all(self) -> None:
        """Abort every connection with a TCP RST (SO_LINGER 0) on both sides."""
        for pair in list(self._pairs):
            for writer in (pair.client, pair.upstream):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            await self._forget(pair)

    async def drop_all(self) -> None:
        """Close every connection cleanly (FIN) on both sides."""
        for pair in list(self._pairs):
            for writer in (pair.client, pair.upstream):
                writer.close()
            await self._forget(pair)

    async def refuse(self) -> None:
        """Close the listener: new connections are refused; existing ones are left alone."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def accept(self) -> None:
        """(Re)open the listener, on the same port once one was chosen."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self._port)
            self._port = self._server.sockets[0].getsockname()[1]

    async def heal(self) -> None:
        """Undo every fault: no latency, forwarding on, listening."""
        self._latency = 0.0
        self._flowing.set()
        await self.accept()

    # Plumbing

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        pair.pumps = [
            asyncio.create_task(self._pump(reader, up_writer, pair)),
            asyncio.create_task(self._pump(up_reader, writer, pair)),
        ]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair) -> None:
        """Copy one direction; when either side ends, close both."""
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                if self._latency:
                    await asyncio.sleep(self._latency)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if pair in self._pairs:
                self._pairs.discard(pair)
                for side in (pair.client, pair.upstream):
                    side.close()

    async def _forget(self, pair: _Pair) -> None:
        self._pairs.discard(pair)
        current = asyncio.current_task()
        for task in pair.pumps:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in pair.pumps if t is not current), return_exceptions=True)
