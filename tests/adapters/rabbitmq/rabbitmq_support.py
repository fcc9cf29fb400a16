"""Shared by the RabbitMQ adapter tests: broker URLs and a fault proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
from urllib.parse import urlsplit

URL = os.environ.get("UNIMQ_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUORUM_URL = os.environ.get("UNIMQ_TEST_RABBITMQ_QUORUM_URL", URL.rstrip("?") + "?queue_type=quorum")
#: What plain aio-pika connects to: the same broker without unimq's query options.
RAW_URL = URL.split("?", 1)[0]


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


class FaultProxy:
    """A TCP proxy to the broker whose connections the test can sever (a network failure)."""

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        broker = urlsplit(RAW_URL)  # the broker under test, also when UNIMQ_TEST_RABBITMQ_URL moves it
        self.target = (host or broker.hostname or "127.0.0.1", port or broker.port or 5672)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def sever(self) -> None:
        """Abort every proxied connection, as a dropped network would."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
