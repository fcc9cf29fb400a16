"""A minimal HTTP health endpoint for container probes (no web framework needed).

``GET /health`` (any path, in fact) answers ``200 {"status": "ok", ...}`` while ``check()`` says
healthy, else ``503``. Anything else than GET/HEAD is ``405``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

Check = Callable[[], tuple[bool, dict[str, Any]]]


async def serve_health(host: str, port: int, check: Check) -> asyncio.Server:
    """Start answering probes on ``host:port``; close the returned server to stop."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            method = request.split(b" ", 1)[0]
            if method in (b"GET", b"HEAD"):
                healthy, detail = check()
                status = "200 OK" if healthy else "503 Service Unavailable"
                body = json.dumps({"status": "ok" if healthy else "unhealthy", **detail}).encode()
            else:
                status, body = "405 Method Not Allowed", b'{"status": "method not allowed"}'
            head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (b"" if method == b"HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(answer, host, port)
