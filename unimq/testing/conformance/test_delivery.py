"""Delivery and fidelity: what goes in comes out, byte for byte, with its metadata."""

from __future__ import annotations

import os

import pytest
from pydantic import BaseModel

import unimq
from unimq.reliability import DEAD_LETTER_REASON, HEADER_PREFIX
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import bodies, collect, collect_all, dead_letters, expect_nothing, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio

MIB = 1024 * 1024


def _app_headers(message: unimq.Message) -> dict[str, str]:
    """The headers an application sees: without unimq's reserved ``x-unimq-*`` ones."""
    return {k: v for k, v in message.headers.items() if not k.startswith(HEADER_PREFIX)}


async def test_send_receive_all(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """N messages in, the same N out (as a set), each with the message_id it was sent with."""
    dest, group = await queue(broker, names)
    producer = broker.producer(dest)
    async with broker.consumer(dest, group) as consumer:
        sent = {(await producer.send(body)).message_id: body for body in bodies(50, "all")}
        got = await collect_all(consumer, sent.values(), timing)
    for delivery in got:
        assert delivery.message.message_id, "every received message has a message_id"
        assert sent.get(delivery.message.message_id) == delivery.message.body, "message_id does not match its body"


async def test_binary_bodies(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Empty, every byte value, invalid UTF-8 and JSON bodies survive byte for byte."""
    dest, group = await queue(broker, names)
    cases = {
        "empty": b"",
        "all-bytes": bytes(range(256)),
        "invalid-utf8": b"\xff\xfe\x00\xc3\x28 \xa0\xa1 \xed\xa0\x80",
        "nul-only": b"\x00" * 16,
        "unicode": "ünïcödé ✓ 中文 🎉".encode(),
        "json": b'{"Foo": "Bar", "n": [1, 2.5, null]}',
    }
    producer = broker.producer(dest)
    async with broker.consumer(dest, group) as consumer:
        for case, body in cases.items():
            await producer.send(body, message_id=f"{case}-{names.dest}")
        ids = [f"{c}-{names.dest}" for c in cases]
        got = await collect_all(consumer, ids, timing, key=lambda d: d.message.message_id)
    for delivery in got:
        case = delivery.message.message_id.removesuffix(f"-{names.dest}")
        assert delivery.message.body == cases[case], f"{case} body changed in transit"


async def test_largest_body(broker: unimq.Broker, names: Names, caps: unimq.Capabilities, timing: Timing) -> None:
    """A body of exactly ``max_message_bytes`` is accepted and delivered intact (1 MiB if the max is larger)."""
    size = min(caps.max_message_bytes, MIB)
    dest, group = await queue(broker, names)
    body = os.urandom(size)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(body)
        [delivery] = await collect_all(consumer, [body], timing)
    assert len(delivery.message.body) == size


@pytest.mark.requires("headers")
async def test_headers_many_and_long(broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                     timing: Timing) -> None:
    """20 headers (or the declared header limit), one of them 1000 characters long, round trip exactly."""
    count = min(20, int(caps.headers.limit)) if caps.headers.limit else 20
    headers = {f"h-{i:02d}": f"value {i}" for i in range(count - 1)}
    headers["long"] = "x" * 1000
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(b"headers", headers=headers)
        [delivery] = await collect_all(consumer, [b"headers"], timing)
    assert _app_headers(delivery.message) == headers


@pytest.mark.requires("headers")
async def test_headers_unicode(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Unicode header keys and values, and mixed case, round trip exactly."""
    headers = {"ключ": "значение", "キー": "値 ✓", "emoji-🎉": "🚀 ok", "Mixed-Case": "Wert äöü", "empty": ""}
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(b"unicode headers", headers=headers)
        [delivery] = await collect_all(consumer, [b"unicode headers"], timing)
    assert _app_headers(delivery.message) == headers


async def test_message_properties(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """key, message_id, correlation_id, reply_to and content_type round trip."""
    dest, group = await queue(broker, names)
    sent = unimq.Message(
        body=b"props", key="customer-42", message_id=f"mid-{names.dest}", correlation_id="corr-7",
        reply_to="replies-here", content_type="application/vnd.unimq.test+json",
    )
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(sent)
        [delivery] = await collect_all(consumer, [b"props"], timing)
    got = delivery.message
    assert (got.key, got.message_id, got.correlation_id, got.reply_to, got.content_type) == (
        sent.key, sent.message_id, sent.correlation_id, sent.reply_to, sent.content_type)


@pytest.mark.requires("persistence")
async def test_default_group_gets_messages_sent_before_it_starts(broker: unimq.Broker, names: Names,
                                                                 timing: Timing) -> None:
    """group=None addresses the destination's own queue/stream: messages sent after ensure() wait for it."""
    dest = names.dest
    await broker.ensure(dest)
    await broker.producer(dest).send_many(bodies(5, "early"))
    async with broker.consumer(dest) as consumer:
        await collect_all(consumer, bodies(5, "early"), timing)


@pytest.mark.requires("fanout", "persistence")
async def test_ensured_group_gets_messages_sent_before_it_starts(broker: unimq.Broker, names: Names,
                                                                 timing: Timing) -> None:
    """A group created by ensure() receives what was sent before any consumer of it ran."""
    dest, group = names.dest, names.group()
    await broker.ensure(dest, groups=(group,))
    await broker.producer(dest).send_many(bodies(5, "early"))
    async with broker.consumer(dest, group) as consumer:
        await collect_all(consumer, bodies(5, "early"), timing)


class Order(BaseModel):
    order_id: int
    customer: str


async def test_typed_payload(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """schema= encodes a pydantic model as JSON on send and validates it on receive."""
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group, schema=Order) as consumer:
        await broker.producer(dest, schema=Order).send(Order(order_id=7, customer="ada"))
        [delivery] = await collect(consumer, 1, timing)
    assert delivery.payload == Order(order_id=7, customer="ada")
    assert delivery.message.content_type == "application/json"


@pytest.mark.requires("dead_letter")
async def test_invalid_payload_dead_lettered(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """A payload that fails validation is dead-lettered with the validation error, not handed to the app."""
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group, schema=Order) as consumer:
        await broker.producer(dest).send(b'{"order_id": "not a number"}')
        await broker.producer(dest, schema=Order).send(Order(order_id=8, customer="bob"))
        [delivery] = await collect(consumer, 1, timing)
        assert delivery.payload == Order(order_id=8, customer="bob")
        await expect_nothing(consumer, timing, "the invalid payload must not reach the application")
    [dead] = await dead_letters(broker, dest, 1, timing)
    assert dead.message.body == b'{"order_id": "not a number"}'
    assert "order_id" in dead.message.headers.get(DEAD_LETTER_REASON, ""), "reason should name the invalid field"
