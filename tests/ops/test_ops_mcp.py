"""The operations MCP tools (dead letters, redrive, purge, health, wait_for) and send_message's new
arguments, through the official MCP client over stdio (``unimq mcp URL``), on every conformance target."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

import unimq
from unimq.testing.brokers import TARGETS, Timing

pytestmark = pytest.mark.timeout(180)

UNIMQ = str(Path(sys.executable).with_name("unimq"))
NAMES = ("memory", "rabbitmq", "kafka", "redis", "nats", "sqs", "servicebus", "servicebus-sessions")
OPS_TOOLS = {"health", "list_dead_letters", "wait_for"}
WRITE_OPS = {"redrive_dead_letters"}


def timing(name: str) -> Timing:
    return next(t.timing for t in TARGETS if t.name == name)


@asynccontextmanager
async def server(url: str, *flags: str) -> AsyncIterator[Client]:
    async with Client(StdioServerParameters(command=UNIMQ, args=["mcp", url, *flags])) as c:
        yield c


class Call:
    def __init__(self, data: Any, error: str | None) -> None:
        self.data = data
        self.error = error

    @property
    def result(self) -> Any:
        assert self.error is None, self.error
        if isinstance(self.data, dict) and set(self.data) == {"result"}:
            return self.data["result"]
        return self.data


async def call(c: Client, tool: str, **arguments: Any) -> Call:
    r = await c.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in r.content)
    return Call(None, text) if r.is_error else Call(r.structured_content, None)


async def receive(c: Client, dest: str, group: str | None, count: int, wait: float,
                  settle: str = "ack") -> list[dict[str, Any]]:
    """Receive until ``count`` arrived or ``wait`` passed (one receive may return fewer)."""
    import time

    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while len(got) < count and time.monotonic() < deadline:
        step = min(5.0, max(0.5, deadline - time.monotonic()))
        got += (await call(c, "receive_messages", destination=dest, group=group, count=count - len(got),
                           wait=step, settle=settle)).result
    return got


@pytest.fixture(params=[pytest.param(n, marks=pytest.mark.needs_broker(n)) for n in NAMES])
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _prepare(url: str, name: str) -> tuple[str, str | None, str]:
    """Fresh destinations (and a group of their own on fan-out backends), made in this process;
    the server's memory:// is its own, so there the server makes them (--create-destinations)."""
    dest = f"ops-{uuid.uuid4().hex[:10]}"
    async with unimq.connect(url) as broker:
        group = "work" if broker.capabilities_for(dest).fanout and name != "memory" else None
        if name != "memory":
            for each in (dest, f"{dest}-results"):
                await broker.ensure(each, dead_letter=True, groups=(group,) if group else ())
        return dest, group, broker.dead_letter_destination(dest)


async def _cleanup(url: str, name: str, dest: str) -> None:
    if name != "memory":
        async with unimq.connect(url) as broker:
            for each in (dest, f"{dest}-results"):
                await broker.delete(each)


async def test_operations_tools(name: str, broker_url: Any) -> None:
    url = broker_url(name)
    t = timing(name)
    dest, group, dlq = await _prepare(url, name)
    results = f"{dest}-results"
    try:
        async with server(url, "--allow-write", "--allow-purge", "--create-destinations", "--max-wait", "30") as c:
            listed = {tool.name for tool in (await c.list_tools()).tools}
            assert OPS_TOOLS | WRITE_OPS | {"purge"} <= listed

            health = (await call(c, "health")).result
            assert health["ok"] is True and health["rtt_ms"] >= 0 and health["error"] is None

            # send_message: the caller's message_id, content_type and session_id (= the key) are kept.
            for i in range(3):
                sent = (await call(c, "send_message", destination=dest, body=f"job-{i}", message_id=f"job-{i}-id",
                                   content_type="text/x-job", session_id="s-1")).result
                assert sent["message_id"] == f"job-{i}-id"
            if name == "memory":
                await call(c, "send_message", destination=results, body="warm-up")  # creates it
                await receive(c, results, None, 1, t.receive)

            held = await receive(c, dest, group, 3, t.receive, settle="later")
            assert sorted(m["message_id"] for m in held) == ["job-0-id", "job-1-id", "job-2-id"]
            assert all(m["key"] == "s-1" and m["content_type"] == "text/x-job" for m in held)
            for m in held:
                if m["body"] == "job-2":
                    await call(c, "settle_message", handle=m["handle"], action="complete")
                else:
                    await call(c, "settle_message", handle=m["handle"], action="dead_letter",
                               reason=f"bad input {m['body']}")

            letters = (await call(c, "list_dead_letters", destination=dest)).result
            assert sorted((d["body"], d["reason"]) for d in letters) == [
                ("job-0", "bad input job-0"), ("job-1", "bad input job-1")]
            assert all(d["message_id"] in ("job-0-id", "job-1-id") for d in letters)

            moved = (await call(c, "redrive_dead_letters", destination=dest, reason_contains="job-0")).result
            assert (moved["moved"], moved["skipped"], moved["failed"]) == (1, 1, 0), moved

            waited = (await call(c, "wait_for", destination=dest, group=group, depth_at_least=1,
                                 timeout=t.receive)).result
            assert waited["met"] is True and waited["depth"] >= 1, waited
            [back] = await receive(c, dest, group, 1, t.receive)
            assert (back["message_id"], back["body"], back["attempt"]) == ("job-0-id", "job-0", 1)
            assert back["content_type"] == "text/x-job" and back["key"] == "s-1"

            # A reply with a correlation_id: wait_for receives it (and only it).
            await call(c, "send_message", destination=results, body="other", correlation_id="c-other",
                       session_id="s-1")
            await call(c, "send_message", destination=results, body="result of job-0", correlation_id="c-0",
                       session_id="s-1")
            got = (await call(c, "wait_for", destination=results, group=group, correlation_id="c-0",
                              timeout=t.receive)).result
            assert got["met"] is True and got["reply"]["body"] == "result of job-0", got
            [other] = await receive(c, results, group, 1, t.receive)
            assert other["correlation_id"] == "c-other"

            nothing = (await call(c, "wait_for", destination=results, group=group, correlation_id="never",
                                  timeout=1)).result
            assert nothing["met"] is False and nothing["reply"] is None and nothing["waited_seconds"] <= 5

            purged = (await call(c, "purge", destination=dest, dead_letters=True)).result
            assert (purged["removed"], purged["purged"]) == (1, dlq)
            assert (await call(c, "list_dead_letters", destination=dest)).result == []

            for tool, args, words in (
                ("wait_for", {"destination": dest, "depth_at_least": 1, "depth_at_most": 0}, "exactly one"),
                ("wait_for", {"destination": dest, "depth_at_most": 0, "timeout": 31}, "--max-wait"),
                ("list_dead_letters", {"destination": dest, "limit": 3}, "unknown argument"),
                ("list_dead_letters", {"destination": dest, "count": 0}, "invalid arguments"),
                ("redrive_dead_letters", {"destination": dest, "rate": -1}, "invalid arguments"),
                ("send_message", {"destination": dest, "body": "x", "key": "a", "session_id": "b"}, "session_id"),
            ):
                r = await call(c, tool, **args)
                assert r.error is not None and words in r.error and "\n" not in r.error, (tool, r.error)
    finally:
        await _cleanup(url, name, dest)


async def test_tools_follow_the_policy() -> None:
    """Read-only: no redrive, no purge. --allow-write: redrive. purge only with its own --allow-purge."""
    async with server("memory://") as c:
        assert {t.name for t in (await c.list_tools()).tools} & (OPS_TOOLS | WRITE_OPS | {"purge"}) == OPS_TOOLS
        r = await call(c, "wait_for", destination="x", correlation_id="c", timeout=1)
        assert r.error is not None and "--allow-write" in r.error
    async with server("memory://", "--allow-write") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert "redrive_dead_letters" in tools and "purge" not in tools
        hints = tools["list_dead_letters"].annotations
        assert hints is not None and hints.read_only_hint is True
    async with server("memory://", "--allow-write", "--allow-purge") as c:
        hints = {t.name: t for t in (await c.list_tools()).tools}["purge"].annotations
        assert hints is not None and hints.destructive_hint is True
