"""The MCP tools through the MCP SDK's own in-process client, on memory:// and real brokers.

Real targets run when their adapter is installed and their broker answers (as the conformance
plugin resolves them); otherwise they skip locally and FAIL when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client

import unimq
from unimq import registry
from unimq.mcp import Policy, build_server
from unimq.testing.brokers import TARGETS, Provisioner, Target
from unimq.url import parse_url

#: memory, two log-style (redis, kafka) and two queue-style (rabbitmq, sqs) backends.
TARGET_NAMES = ("memory", "redis", "kafka", "rabbitmq", "sqs")
_provisioner = Provisioner()

pytestmark = pytest.mark.timeout(120)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI: a missing broker is a failure)")
    pytest.skip(reason)


@pytest.fixture(params=TARGET_NAMES)
def target(request: pytest.FixtureRequest) -> Target:
    target = next(t for t in TARGETS if t.name == request.param)
    if target.scheme not in registry.installed():
        _unavailable(f'{target.name}: adapter not installed (pip install "unimq[{target.backend}]")')
    resolution = _provisioner.resolve(target)
    if resolution.url is None:
        _unavailable(resolution.problem)
    return Target(target.name, resolution.url or target.url, target.backend, target.timing)


@pytest.fixture
async def broker(target: Target) -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(target.url) as broker:
        yield broker


@pytest.fixture
async def dest(broker: unimq.Broker) -> AsyncIterator[str]:
    """A fresh destination and its ``<name>-replies`` companion, deleted afterwards."""
    name = f"mcp-{uuid.uuid4().hex[:10]}"
    for each in (name, f"{name}-replies"):
        await broker.ensure(each, dead_letter=True)
    yield name
    for each in (name, f"{name}-replies"):
        await broker.delete(each)


@asynccontextmanager
async def client(broker: unimq.Broker, **policy: Any) -> AsyncIterator[Client]:
    async with Client(build_server(broker, Policy(**policy))) as c:
        yield c


class Result:
    def __init__(self, data: Any, error: str | None) -> None:
        self.data = data
        self.error = error

    @property
    def result(self) -> Any:
        """The structured output (lists arrive wrapped as {"result": [...]})."""
        assert self.error is None, self.error
        if isinstance(self.data, dict) and set(self.data) == {"result"}:
            return self.data["result"]
        return self.data


async def call(c: Client, tool: str, **arguments: Any) -> Result:
    r = await c.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in r.content)
    return Result(None, text) if r.is_error else Result(r.structured_content, None)


async def receive_all(c: Client, dest: str, count: int, wait: float, settle: str = "ack") -> list[dict[str, Any]]:
    """Receive until ``count`` messages arrived (a receive may return fewer than asked)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while len(got) < count and time.monotonic() < deadline:
        step = min(5.0, max(0.5, deadline - time.monotonic()))
        got += (await call(c, "receive_messages", destination=dest, count=count - len(got), wait=step,
                           settle=settle)).result
    return got


# Every tool, on every target.

async def test_read_tools(broker: unimq.Broker, dest: str, target: Target) -> None:
    async with client(broker, allow_write=True) as c:
        sent = (await call(c, "send_message", destination=dest, body={"task": "resize", "n": 3}, key="k1",
                           headers={"tenant": "acme"}, correlation_id="corr-1")).result
        assert sent["destination"] == dest and sent["message_id"]

        listed = await call(c, "list_destinations")
        if listed.error is None:
            assert dest in listed.result
        else:
            assert "CapabilityError" in listed.error and "list" in listed.error

        props = (await call(c, "destination_properties", destination=dest)).result
        assert props["backend"] == broker.backend
        assert props["dead_letter_destination"] == broker.dead_letter_destination(dest)
        assert props["capabilities"]["peek"] == str(broker.capabilities_for(dest).peek)
        assert props["depth"] in (None, 1)

        peeked = await call(c, "peek_messages", destination=dest, count=5)
        if broker.capabilities_for(dest).peek:
            [message] = peeked.result
            assert json.loads(message["body"]) == {"task": "resize", "n": 3}
            assert message["content_type"] == "application/json"
            assert message["key"] == "k1" and message["correlation_id"] == "corr-1"
            assert message["headers"]["tenant"] == "acme"
        else:
            assert peeked.error is not None and "'peek' capability is 'none'" in peeked.error

        # Still there after peeking: received exactly once.
        [received] = await receive_all(c, dest, 1, target.timing.receive)
        assert received["message_id"] == sent["message_id"] and received["attempt"] == 1


async def test_receive_and_settle(broker: unimq.Broker, dest: str, target: Target) -> None:
    async with client(broker, allow_write=True) as c:
        for body in ("m0", "m1", "m2"):
            await call(c, "send_message", destination=dest, body=body)
        acked = await receive_all(c, dest, 1, target.timing.receive)
        held = await receive_all(c, dest, 2, target.timing.receive, settle="later")
        assert sorted(m["body"] for m in acked + held) == ["m0", "m1", "m2"]
        assert all(m["handle"] for m in held) and acked[0]["handle"] is None

        done = (await call(c, "settle_message", handle=held[0]["handle"], action="complete")).result
        assert done == {"handle": held[0]["handle"], "message_id": held[0]["message_id"], "action": "complete"}
        await call(c, "settle_message", handle=held[1]["handle"], action="dead_letter", reason="bad input")

        again = await call(c, "settle_message", handle=held[0]["handle"], action="complete")
        assert again.error is not None and "unknown or expired lock handle" in again.error

        assert await receive_all(c, dest, 1, target.timing.quiet) == []
        dlq = await receive_all(c, broker.dead_letter_destination(dest), 1, target.timing.receive)
        assert [m["body"] for m in dlq] == [held[1]["body"]]
        assert dlq[0]["headers"].get("x-unimq-dead-letter-reason") == "bad input"


async def test_abandon_redelivers(broker: unimq.Broker, dest: str, target: Target) -> None:
    async with client(broker, allow_write=True) as c:
        await call(c, "send_message", destination=dest, body="again")
        [held] = await receive_all(c, dest, 1, target.timing.receive, settle="later")
        await call(c, "settle_message", handle=held["handle"], action="abandon")
        [redelivered] = await receive_all(c, dest, 1, target.timing.receive)
        assert redelivered["message_id"] == held["message_id"]
        assert redelivered["attempt"] >= 2  # a read-ahead copy released on close counts too (RabbitMQ)


async def test_request_reply(broker: unimq.Broker, dest: str, target: Target) -> None:
    async def worker() -> None:
        async with broker.consumer(dest) as consumer:
            async for delivery in consumer:
                request = delivery.message
                assert request.reply_to is not None
                await broker.producer(request.reply_to).send(b"done: " + request.body,
                                                             correlation_id=request.correlation_id)
                await delivery.ack()
                return

    task = asyncio.create_task(worker())
    try:
        async with client(broker, allow_write=True) as c:
            out = (await call(c, "request_reply", destination=dest, body="resize img-7",
                              reply_to=f"{dest}-replies", wait=target.timing.receive)).result
        assert out["reply"]["body"] == "done: resize img-7"
        assert out["reply"]["correlation_id"] == out["request"]["correlation_id"]
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()


async def test_request_reply_on_the_private_reply_path(broker: unimq.Broker, dest: str, target: Target) -> None:
    """Without reply_to the tool uses Broker.request: the reply comes back on the server's own path."""
    if target.pool:
        pytest.skip("the private reply path needs a destination made at run time")

    async def worker() -> None:
        async with broker.consumer(dest) as consumer:
            async for delivery in consumer:
                await delivery.reply(b"done: " + delivery.message.body)
                await delivery.ack()
                return

    task = asyncio.create_task(worker())
    try:
        async with client(broker, allow_write=True) as c:
            out = (await call(c, "request_reply", destination=dest, body="resize img-8",
                              wait=target.timing.receive)).result
        assert out["reply"]["body"] == "done: resize img-8"
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()


async def test_binary_body_comes_back_as_base64(broker: unimq.Broker, dest: str, target: Target) -> None:
    await broker.producer(dest).send(b"\xff\xfe\x00binary")
    async with client(broker, allow_write=True) as c:
        [message] = await receive_all(c, dest, 1, target.timing.receive)
    assert message["body_encoding"] == "base64"
    assert base64.b64decode(message["body"]) == b"\xff\xfe\x00binary"


async def test_unknown_destination(broker: unimq.Broker, target: Target) -> None:
    if target.name == "rabbitmq":
        pytest.skip("rabbitmq cannot list its destinations, so unknown names are not detected (documented)")
    missing = f"mcp-missing-{uuid.uuid4().hex[:8]}"
    async with client(broker, allow_write=True) as c:
        for tool, args in (("destination_properties", {}), ("send_message", {"body": "x"}),
                           ("receive_messages", {"wait": 0.1})):
            r = await call(c, tool, destination=missing, **args)
            assert r.error is not None and f"no destination {missing!r}" in r.error, (tool, r.error)


# Safety and error paths (memory://, plus a limited fake backend).

@pytest.fixture
async def memory() -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(f"memory://mcp-{uuid.uuid4().hex[:8]}") as broker:
        for name in ("orders", "orders-replies", "audit"):
            await broker.ensure(name)
        yield broker


@pytest.mark.parametrize("tool,args", [
    ("send_message", {"destination": "orders", "body": "x"}),
    ("receive_messages", {"destination": "orders"}),
    ("settle_message", {"handle": "h", "action": "complete"}),
    ("request_reply", {"destination": "orders", "body": "x", "reply_to": "orders-replies"}),
])
async def test_write_tools_are_off_by_default(memory: unimq.Broker, tool: str, args: dict[str, Any]) -> None:
    """A read-only server does not list the write tools at all, and calling one anyway fails."""
    async with client(memory) as c:
        r = await call(c, tool, **args)
        listed = {t.name for t in (await c.list_tools()).tools}
    assert {"list_destinations", "destination_properties", "peek_messages"} <= listed
    assert not listed & {"send_message", "receive_messages", "settle_message", "request_reply"}
    assert r.error is not None and tool in r.error and "\n" not in r.error
    assert await memory.peek("orders") == []


async def test_tool_annotations(memory: unimq.Broker) -> None:
    async with client(memory, allow_write=True) as c:
        tools = {t.name: t.annotations for t in (await c.list_tools()).tools}
    assert {"send_message", "receive_messages", "settle_message", "request_reply"} <= set(tools)
    for name in ("receive_messages", "settle_message"):
        hints = tools[name]
        assert hints is not None and hints.destructive_hint is True, name
    for name in ("list_destinations", "destination_properties", "peek_messages"):
        hints = tools[name]
        assert hints is not None and hints.read_only_hint is True, name


@pytest.mark.parametrize("tool,args", [
    ("send_message", {"destination": "orders", "body": "x", "delay_seconds": 5}),
    ("peek_messages", {"destination": "orders", "limit": 3}),
    ("list_destinations", {"prefix": "o"}),
])
async def test_unknown_arguments_are_errors(memory: unimq.Broker, tool: str, args: dict[str, Any]) -> None:
    """A misspelt argument must not be dropped silently (the send would happen without its delay)."""
    async with client(memory, allow_write=True) as c:
        r = await call(c, tool, **args)
    assert r.error is not None and "unknown argument" in r.error and "\n" not in r.error
    unknown = next(k for k in args if k not in ("destination", "body"))
    assert repr(unknown) in r.error
    assert await memory.peek("orders") == []


@pytest.mark.parametrize("tool,args", [
    ("send_message", {"destination": "orders", "body": "x", "ttl": -1}),
    ("send_message", {"destination": "orders", "body": 5}),
    ("receive_messages", {"destination": "orders", "count": 0, "settle": "sometimes"}),
    ("settle_message", {"handle": "h", "action": "explode"}),
    ("peek_messages", {"destination": ["orders"]}),
])
async def test_validation_errors_are_one_line(memory: unimq.Broker, tool: str, args: dict[str, Any]) -> None:
    async with client(memory, allow_write=True) as c:
        r = await call(c, tool, **args)
    assert r.error is not None and "\n" not in r.error and f"{tool}: invalid arguments" in r.error


@pytest.mark.parametrize("settle", ["ack", "later"])
async def test_a_message_that_cannot_be_shown_is_not_settled(memory: unimq.Broker, settle: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The view is built before the ack: if it fails, the message stays on the queue."""
    from unimq import inspect

    await memory.producer("orders").send(b"keep me")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("cannot show this one")

    monkeypatch.setattr(inspect, "message_view", broken)
    async with client(memory, allow_write=True) as c:
        r = await call(c, "receive_messages", destination="orders", wait=1, settle=settle)
        assert r.error is not None and "released, not settled" in r.error and "\n" not in r.error
    monkeypatch.undo()
    consumer = memory.consumer("orders")
    async with consumer:
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None and delivery.message.body == b"keep me"
        await delivery.ack()


async def test_request_reply_does_not_ack_a_reply_it_cannot_show(memory: unimq.Broker,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from unimq import inspect

    real = inspect.message_view

    def broken(message: unimq.Message, **kwargs: Any) -> Any:
        if message.body == b"the reply":
            raise ValueError("cannot show the reply")
        return real(message, **kwargs)

    async def responder() -> None:
        async with memory.consumer("orders") as requests:
            request = await requests.receive(timeout=5)
            assert request is not None and request.message.reply_to
            await memory.producer(request.message.reply_to).send(
                b"the reply", correlation_id=request.message.correlation_id)
            await request.ack()

    monkeypatch.setattr(inspect, "message_view", broken)
    async with client(memory, allow_write=True) as c:
        task = asyncio.create_task(responder())
        r = await call(c, "request_reply", destination="orders", body="q", reply_to="orders-replies", wait=5)
        await task
    assert r.error is not None and "released, not settled" in r.error
    assert [m.body for m in await memory.peek("orders-replies")] == [b"the reply"]


async def test_allow_list(memory: unimq.Broker) -> None:
    async with client(memory, allow_write=True, allow_destinations=("orders*",)) as c:
        listed = (await call(c, "list_destinations")).result
        assert "orders" in listed and "orders-replies" in listed and "audit" not in listed
        for tool, args in (("peek_messages", {"destination": "audit"}),
                           ("send_message", {"destination": "audit", "body": "x"}),
                           ("send_message", {"destination": "orders", "body": "x", "reply_to": "audit"}),
                           ("destination_properties", {"destination": "audit"})):
            r = await call(c, tool, **args)
            assert r.error is not None and "'audit' is not in this server's allow-list" in r.error
        assert (await call(c, "send_message", destination="orders", body="ok")).error is None


async def test_limits(memory: unimq.Broker) -> None:
    await memory.producer("orders").send(b"0123456789abcdefghij")
    async with client(memory, allow_write=True, max_body_bytes=10, max_count=5, max_wait=2) as c:
        big = await call(c, "send_message", destination="orders", body="x" * 11)
        assert big.error is not None and "body is 11 bytes" in big.error and "--max-body-bytes" in big.error
        over = await call(c, "peek_messages", destination="orders", count=6)
        assert over.error is not None and "--max-count" in over.error
        slow = await call(c, "receive_messages", destination="orders", wait=3)
        assert slow.error is not None and "--max-wait" in slow.error
        [shown] = (await call(c, "peek_messages", destination="orders")).result
        assert shown["body"] == "0123456789" and shown["truncated"] and shown["body_bytes"] == 20


async def test_unknown_destination_on_memory(memory: unimq.Broker) -> None:
    async with client(memory, allow_write=True) as c:
        r = await call(c, "peek_messages", destination="ordres")
    assert r.error is not None and "no destination 'ordres'" in r.error
    assert "ordres" not in await memory.destinations()


async def test_bad_arguments_are_tool_errors(memory: unimq.Broker) -> None:
    async with client(memory, allow_write=True) as c:
        r = await call(c, "settle_message", handle="h", action="explode")
        assert r.error is not None and "action" in r.error
        r = await call(c, "peek_messages", destination="orders", count=0)
        assert r.error is not None and "count" in r.error


async def test_expired_handle_is_released(memory: unimq.Broker) -> None:
    await memory.producer("orders").send(b"slow")
    async with client(memory, allow_write=True, lock_seconds=0.3) as c:
        [held] = (await call(c, "receive_messages", destination="orders", settle="later", wait=1)).result
        await asyncio.sleep(0.5)
        late = await call(c, "settle_message", handle=held["handle"], action="complete")
        assert late.error is not None and "unknown or expired lock handle" in late.error
        [again] = (await call(c, "receive_messages", destination="orders", wait=1)).result
        assert again["message_id"] == held["message_id"] and again["attempt"] == 2


async def test_held_messages_are_bounded(memory: unimq.Broker) -> None:
    await memory.producer("orders").send_many([b"a", b"b"])
    async with client(memory, allow_write=True, max_held=1) as c:
        assert len((await call(c, "receive_messages", destination="orders", settle="later", wait=1)).result) == 1
        r = await call(c, "receive_messages", destination="orders", settle="later", wait=1)
        assert r.error is not None and "already held" in r.error


async def test_held_messages_are_released_when_the_server_stops(memory: unimq.Broker) -> None:
    await memory.producer("orders").send(b"x")
    async with client(memory, allow_write=True) as c:
        await call(c, "receive_messages", destination="orders", settle="later", wait=1)
        assert (await memory.stats("orders")).in_flight == 1
    assert (await memory.stats("orders")).depth == 1


def _limited_driver() -> type:
    """memory:// without peek and priority, whose sends to 'explode' fail quoting the password."""
    from unimq.capabilities import none
    from unimq.memory import MemoryDriver

    class LimitedDriver(MemoryDriver):
        name = "limited"

        def __init__(self, url: Any, options: Any) -> None:
            super().__init__(url, options)
            self._caps = self._caps.model_copy(update={"backend": "limited", "peek": none(), "priority": none()})

        async def publish(self, destination: str, messages: Any) -> Any:
            if destination == "explode":
                raise RuntimeError(f"auth failed for admin:{self.url.password}@broker")
            return await super().publish(destination, messages)

    return LimitedDriver


class _EntryPoint:
    def __init__(self, cls: type) -> None:
        self.value = f"{cls.__module__}:{cls.__name__}"
        self._cls = cls

    def load(self) -> type:
        return self._cls


async def test_missing_capability_and_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.installed(), "limited", _EntryPoint(_limited_driver()))
    secret = "s3cr3t-Pa55word"
    url = f"limited://admin:{secret}@mcp-{uuid.uuid4().hex[:8]}/"
    async with unimq.connect(url) as broker:
        for name in ("orders", "explode"):
            await broker.ensure(name)
        async with client(broker, allow_write=True) as c:
            outputs = []
            peek = await call(c, "peek_messages", destination="orders")
            assert peek.error is not None
            assert "limited cannot honour peek(): its 'peek' capability is 'none'" in peek.error
            prio = await call(c, "send_message", destination="orders", body="x", priority=3)
            assert prio.error is not None and "'priority' capability is 'none'" in prio.error
            boom = await call(c, "send_message", destination="explode", body="x")
            assert boom.error is not None and "auth failed" in boom.error
            outputs += [peek.error, prio.error, boom.error]
            outputs.append(json.dumps((await call(c, "destination_properties", destination="orders")).result))
            outputs.append(json.dumps((await call(c, "list_destinations")).result))
            outputs += [t.model_dump_json() for t in (await c.list_tools()).tools]
        outputs.append(build_server(broker).instructions or "")
    assert all(secret not in text for text in outputs)
    assert parse_url(url).redacted() != url


async def test_create_destinations_is_opt_in(memory: unimq.Broker) -> None:
    async with client(memory, allow_write=True) as c:
        assert (await call(c, "send_message", destination="fresh", body="x")).error is not None
    async with client(memory, allow_write=True, create_destinations=True) as c:
        assert (await call(c, "send_message", destination="fresh", body="x")).error is None
        assert (await call(c, "peek_messages", destination="fresh")).result[0]["body"] == "x"
