"""nats-py's TCP transport with reads sized for large messages.

nats-py reads the socket 32 KiB at a time into a StreamReader whose limit is also 32 KiB, so the
reader pauses the socket once 64 KiB are buffered: a 64 KiB message cost three reads, three parser
passes and a pause/resume of the socket. Reading 256 KiB (asyncio's largest recv) into a reader
that pauses at 512 KiB took 64 KiB consume from 83 to 65 µs CPU per message (docs/backends/nats.md).
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client
from nats.aio.transport import TcpTransport

#: Bytes per read, and the StreamReader limit (it pauses the socket at twice this).
READ_SIZE = 256 * 1024


class LargeReadTransport(TcpTransport):
    """A TcpTransport that reads READ_SIZE at a time; nats-py keeps it across reconnects."""

    async def connect(self, uri: Any, buffer_size: int, connect_timeout: int) -> None:
        await super().connect(uri, max(buffer_size, READ_SIZE), connect_timeout)

    async def read(self, buffer_size: int) -> bytes:
        data: bytes = await super().read(max(buffer_size, READ_SIZE))
        return data

    def __bool__(self) -> bool:
        # nats-py replaces a falsy (not yet connected) transport with its own before connecting.
        return self._io_writer is None or super().__bool__()  # type: ignore[no-untyped-call]


async def connect(**kwargs: Any) -> Client:
    """``nats.connect`` with a LargeReadTransport (nats-py takes a transport only through ``_transport``)."""
    nc = Client()
    nc._transport = LargeReadTransport()  # type: ignore[no-untyped-call]
    await nc.connect(**kwargs)
    return nc
