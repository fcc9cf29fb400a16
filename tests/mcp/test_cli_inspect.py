"""``unimq peek / stats / ls`` share unimq.inspect with the MCP tools; ``unimq mcp`` serves over stdio."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

import unimq
from unimq.cli import main

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def url() -> str:
    """A memory:// broker of this process with a destination 'jobs' holding two messages."""
    url = f"memory://cli-{uuid.uuid4().hex[:8]}"

    async def fill() -> None:
        async with unimq.connect(url) as broker:
            await broker.ensure("jobs")
            await broker.producer("jobs").send(b"first", key="k", headers={"tenant": "acme"})
            await broker.producer("jobs").send(b"\xff\x00")

    asyncio.run(fill())
    return url


def test_peek(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["peek", url, "jobs", "--count", "1"]) == 0
    out = capsys.readouterr().out
    assert "key=k" in out and "tenant" in out and "  first" in out
    assert main(["peek", url, "jobs", "--json"]) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["body"] == "first" and second["body_encoding"] == "base64"


def test_stats(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", url, "jobs"]) == 0
    out = capsys.readouterr().out
    assert "depth                    2" in out and "dead_letter_destination  jobs.dlq" in out
    assert main(["stats", url, "jobs", "--json"]) == 0
    props = json.loads(capsys.readouterr().out)
    assert props["depth"] == 2 and props["capabilities"]["peek"] == "native"


def test_ls(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", url]) == 0
    assert "jobs" in capsys.readouterr().out.split()
    assert main(["ls", url, "--json"]) == 0
    assert "jobs" in json.loads(capsys.readouterr().out)


def test_errors_are_one_line(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["peek", url, "jbos"]) == 2
    assert capsys.readouterr().err.strip() == f"unimq: NotFound: no destination 'jbos' on {url}; see " \
                                              "list_destinations / `unimq ls`"


async def test_mcp_command_serves_stdio() -> None:
    unimq_cli = str(Path(sys.executable).with_name("unimq"))
    params = StdioServerParameters(command=unimq_cli, args=["mcp", "memory://", "--allow-write", "--max-count", "3",
                                                             "--create-destinations"])
    async with Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"send_message", "peek_messages", "receive_messages", "settle_message", "request_reply",
                "destination_properties", "list_destinations"} <= names
        sent = await client.call_tool("send_message", {"destination": "jobs", "body": "hi"})
        assert not sent.is_error  # memory:// starts empty; --create-destinations made 'jobs'
        peeked = await client.call_tool("peek_messages", {"destination": "jobs"})
        assert peeked.structured_content is not None and peeked.structured_content["result"][0]["body"] == "hi"
        over = await client.call_tool("peek_messages", {"destination": "x", "count": 4})
        assert over.is_error and "--max-count" in str(over.content)
