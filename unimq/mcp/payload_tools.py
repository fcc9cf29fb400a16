"""MCP ``read_payload``: read the body a claim-check reference points to (docs/payloads.md).

An assistant that finds a message carrying ``x-unimq-claim-check`` (its body is a small JSON
reference) reads the stored body with this tool, a page of at most the server's
``max_body_bytes`` at a time. The store is the one named by ``$UNIMQ_PAYLOAD_STORE`` (a store URL:
``s3://…``, ``azblob://…``, ``file:///…``); without it the tool is not listed. Only keys the store
itself makes are read, objects over :data:`MAX_OBJECT_BYTES` are refused, and the size and
SHA-256 of the reference are checked.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from unimq.payloads import Store, open_store, parse_reference, resolve

if TYPE_CHECKING:
    from unimq.mcp.server import Tools

#: The environment variable naming the store ``read_payload`` reads from.
STORE_ENV = "UNIMQ_PAYLOAD_STORE"
#: The largest object read (each call downloads the object, then returns one page of it).
MAX_OBJECT_BYTES = 64 * 1024 * 1024

_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=True)


class PayloadView(BaseModel):
    uri: str = Field(description="where the body is stored")
    size: int = Field(description="bytes of the whole stored body")
    sha256: str
    offset: int = Field(description="first byte shown")
    body: str = Field(description="UTF-8 text, or base64 when body_encoding is base64")
    body_encoding: str
    truncated: bool = Field(description="true when more bytes follow: call again with offset = offset + shown")
    shown: int = Field(description="bytes shown in this page")


class PayloadTools:
    """``read_payload``, under the server's policy and error handling."""

    def __init__(self, tools: Tools, store_url: str | None = None, store: Store | None = None) -> None:
        self.tools = tools
        self._url = store_url
        self._store = store
        self._opening = asyncio.Lock()

    async def _opened(self) -> Store:
        async with self._opening:
            if self._store is None:
                assert self._url is not None
                self._store = await open_store(self._url)
            return self._store

    async def read_payload(
        self,
        reference: Annotated[str, Field(description=(
            "the body of a message that has the x-unimq-claim-check header (a JSON reference), as "
            "peek_messages or receive_messages show it"))],
        offset: Annotated[int, Field(ge=0, description="first byte to show; default 0")] = 0,
    ) -> PayloadView:
        """Read the stored body a claim-check reference points to (one page of at most --max-body-bytes)."""
        limit = self.tools.policy.max_body_bytes

        async def run() -> PayloadView:
            doc = parse_reference(reference.encode())
            if offset > doc["size"]:
                raise ToolError(f"offset {offset} is past the end of the {doc['size']}-byte body")
            store = await self._opened()
            data = await resolve(store, reference.encode(), MAX_OBJECT_BYTES)
            page = data[offset:offset + limit]
            try:
                text, encoding = page.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = base64.b64encode(page).decode("ascii"), "base64"
            return PayloadView(uri=store.uri(doc["key"]), size=len(data), sha256=doc["sha256"], offset=offset,
                               body=text, body_encoding=encoding, truncated=offset + len(page) < len(data),
                               shown=len(page))

        return await self.tools._run(run())


def tools(queue_tools: Tools, store: Store | None = None) -> list[tuple[Callable[..., Awaitable[Any]],
                                                                         ToolAnnotations]]:
    """``read_payload`` when a store is configured (``store``, else ``$UNIMQ_PAYLOAD_STORE``), else nothing."""
    url = os.environ.get(STORE_ENV)
    if store is None and not url:
        return []
    return [(PayloadTools(queue_tools, url, store).read_payload, _READ_ONLY)]
