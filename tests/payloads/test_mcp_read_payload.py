"""The MCP read_payload tool through the SDK's in-process client: pages, limits, forged references."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

import unimq
from unimq.mcp import Policy, build_server
from unimq.mcp.payload_tools import STORE_ENV
from unimq.payloads import CLAIM_CHECK_HEADER, ClaimCheck, FileStore


async def call(client: Client, tool: str, **arguments: Any) -> tuple[dict[str, Any] | None, str]:
    result = await client.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in result.content)
    return (None if result.is_error else result.structured_content), text


async def test_an_assistant_reads_a_referenced_body_in_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV, f"file://{tmp_path}")
    store = await FileStore(tmp_path).open()
    body = os.urandom(3000).hex().encode()  # 6000 bytes of text
    async with unimq.connect(f"memory://mcp-{uuid.uuid4().hex[:6]}") as broker:
        await broker.ensure("results")
        await broker.producer("results", middlewares=[ClaimCheck(store, threshold=1000)]).send(body)
        async with Client(build_server(broker, Policy(max_body_bytes=4096))) as client:
            peeked, _ = await call(client, "peek_messages", destination="results")
            assert peeked is not None
            (message,) = peeked["result"]
            assert CLAIM_CHECK_HEADER in message["headers"]
            first, _ = await call(client, "read_payload", reference=message["body"])
            assert first is not None and first["size"] == 6000 and first["truncated"] and first["shown"] == 4096
            rest, _ = await call(client, "read_payload", reference=message["body"], offset=4096)
            assert rest is not None and not rest["truncated"]
            assert (first["body"] + rest["body"]).encode() == body
            forged = json.dumps({**json.loads(message["body"]), "key": "../../etc/passwd"})
            refused, error = await call(client, "read_payload", reference=forged)
            assert refused is None and "is not one this store" in error
            bad, error = await call(client, "read_payload", reference="not a reference")
            assert bad is None and "not JSON" in error


async def test_without_a_store_the_tool_is_not_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    async with unimq.connect("memory://") as broker, Client(build_server(broker)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert "peek_messages" in names and "read_payload" not in names
