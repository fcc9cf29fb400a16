"""Optional features, each gated by its capability: delay, TTL, priority, de-duplication, peek, stats, listing."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

import unimq
from unimq.testing.brokers import Target, Timing
from unimq.testing.conformance.support import bodies, collect, collect_all, expect_nothing, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio


@pytest.mark.requires("delayed_delivery")
async def test_delayed_message_not_delivered_early(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    dest, group = await queue(broker, names)
    producer = broker.producer(dest)
    sent_at = time.monotonic()  # the delay runs from the call: a first send may wait for metadata
    await producer.send(b"delayed", delay=timedelta(seconds=timing.delay))
    await producer.send(b"now")
    arrived: dict[bytes, float] = {}
    async with broker.consumer(dest, group) as consumer:
        for delivery in await collect_all(consumer, [b"delayed", b"now"], timing):
            arrived.setdefault(delivery.message.body, time.monotonic() - sent_at)
    assert arrived[b"delayed"] >= timing.delay - timing.early, (
        f"delivered {arrived[b'delayed']:.2f}s after sending, before its {timing.delay:g}s delay")


@pytest.mark.requires("message_ttl")
async def test_expired_message_not_delivered(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """A message whose TTL passed before anyone read it is dropped; one read within its TTL is delivered."""
    dest, group = await queue(broker, names)
    producer = broker.producer(dest)
    await producer.send(b"expires", ttl=timedelta(seconds=timing.ttl))
    await producer.send(b"fresh", ttl=timedelta(minutes=10))
    await producer.send(b"forever")
    await asyncio.sleep(timing.ttl + timing.quiet)
    async with broker.consumer(dest, group) as consumer:
        await collect_all(consumer, [b"fresh", b"forever"], timing)  # fails on "expires"
        await expect_nothing(consumer, timing, "an expired message was delivered")


@pytest.mark.requires("priority")
async def test_higher_priority_first(broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                     timing: Timing) -> None:
    """Sent with mixed priorities before the consumer starts: received highest first."""
    top = int(min(caps.priority.limit or 9, 9))
    order = [1, top, 0, top // 2, top - 1]
    dest, group = await queue(broker, names, max_priority=top)
    for priority in order:
        await broker.producer(dest).send(f"p{priority}".encode(), priority=priority)
    async with broker.consumer(dest, group, prefetch=1) as consumer:
        got = await collect(consumer, len(order), timing)
    received = [int(d.message.body[1:]) for d in got]
    assert received == sorted(order, reverse=True), f"received priorities {received}"


@pytest.mark.requires("deduplication")
async def test_duplicate_message_id_delivered_once(broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                                   timing: Timing) -> None:
    window = timedelta(seconds=caps.deduplication.limit) if caps.deduplication.limit else timedelta(minutes=1)
    dest, group = await queue(broker, names, deduplication=window)
    producer = broker.producer(dest)
    await producer.send(unimq.Message(body=b"first", message_id=f"dup-{dest}"))
    await producer.send(unimq.Message(body=b"second", message_id=f"dup-{dest}"))
    await producer.send(unimq.Message(body=b"other", message_id=f"other-{dest}"))
    async with broker.consumer(dest, group) as consumer:
        got = await collect_all(consumer, [b"first", b"other"], timing)  # fails on "second"
        await expect_nothing(consumer, timing, "a duplicate within the de-duplication window was delivered")
    assert sorted(d.message.body for d in got) == [b"first", b"other"]


@pytest.mark.requires("peek")
async def test_peek_does_not_consume(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    dest = names.dest
    await broker.ensure(dest)
    sent = bodies(3, "peek")
    await broker.producer(dest).send_many(sent)
    peeked: list[unimq.Message] = []

    async def look() -> bool:
        peeked[:] = await broker.peek(dest, 10)
        return len(peeked) >= 3

    deadline = time.monotonic() + timing.receive
    while not await look() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert sorted(m.body for m in peeked) == sent
    assert sorted(m.body for m in await broker.peek(dest, 10)) == sent, "a second peek sees the same messages"
    async with broker.consumer(dest) as consumer:
        await collect_all(consumer, sent, timing)


async def test_stats_shows_depth(broker: unimq.Broker, names: Names, unimq_target: Target, timing: Timing) -> None:
    """stats().depth counts waiting messages (backends may report it with a delay), and drops after consuming."""
    dest = names.dest
    await broker.ensure(dest)
    await broker.producer(dest).send_many(bodies(3, "depth"))
    try:
        stats = await broker.stats(dest)
    except unimq.CapabilityError as exc:
        pytest.skip(f"{unimq_target.name}: stats() refused: {exc}")
    if stats.depth is None:
        pytest.skip(f"{unimq_target.name}: stats().depth is None (the backend cannot tell)")
    depth: list[int | None] = [stats.depth]

    async def poll(expected: int) -> None:
        deadline = time.monotonic() + timing.receive
        while depth[0] != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            depth[0] = (await broker.stats(dest)).depth
        assert depth[0] == expected, f"stats().depth is {depth[0]}, expected {expected}"

    await poll(3)
    async with broker.consumer(dest) as consumer:
        await collect_all(consumer, bodies(3, "depth"), timing)
    await poll(0)


async def test_destinations_lists_an_ensured_destination(broker: unimq.Broker, names: Names,
                                                         unimq_target: Target, timing: Timing) -> None:
    """Tolerates CapabilityError (a backend with no way to list), which is then reported as a skip."""
    dest = names.dest
    await broker.ensure(dest)
    listed: list[str] = []

    async def listed_now() -> bool:
        listed[:] = await broker.destinations()
        return any(dest in name for name in listed)

    try:
        found = await listed_now()
    except unimq.CapabilityError as exc:
        pytest.skip(f"{unimq_target.name}: cannot list destinations: {exc}")
    deadline = time.monotonic() + timing.receive
    while not found and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        found = await listed_now()
    assert found, f"{dest} not in destinations() ({len(listed)} listed)"
