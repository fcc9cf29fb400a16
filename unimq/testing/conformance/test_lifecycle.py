"""Lifecycle: closing, cancelling and reopening lose nothing and fail clearly."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import unimq
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import bodies, collect, collect_all, describe, expect_nothing, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio


async def test_send_after_close_raises_closed(unimq_url: str, broker: unimq.Broker, names: Names,
                                              timing: Timing) -> None:
    dest, _ = await queue(broker, names)
    async with asyncio.timeout(timing.receive):
        other = await unimq.connect(unimq_url)
    producer = other.producer(dest)
    await other.close()
    await other.close()  # a second close is harmless
    with pytest.raises(unimq.Closed):
        await producer.send(b"too late")
    with pytest.raises(unimq.Closed):
        other.producer(dest)
    own = broker.producer(dest)
    await own.close()
    with pytest.raises(unimq.Closed):
        await own.send(b"closed producer")


async def test_receive_after_consumer_close_raises_closed(broker: unimq.Broker, names: Names) -> None:
    dest, group = await queue(broker, names)
    consumer = await broker.consumer(dest, group).open()
    await consumer.close()
    await consumer.close()  # a second close is harmless
    with pytest.raises(unimq.Closed):
        await consumer.receive(timeout=0.1)


async def test_cancelled_receive_loses_nothing(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Cancel a receive() racing with a send: the message is either returned or comes back to the next consumer."""
    dest, group = await queue(broker, names)
    consumer = await broker.consumer(dest, group, lock_timeout=timing.lock).open()
    pending = asyncio.create_task(consumer.receive(timeout=timing.receive))
    await asyncio.sleep(0.1)
    await broker.producer(dest).send(b"raced")
    await asyncio.sleep(0)
    pending.cancel()
    got = None
    with contextlib.suppress(asyncio.CancelledError):
        got = await pending
    if got is not None:
        await got.ack()
        await consumer.close()
        return
    idle = await consumer.receive(timeout=timing.quiet)
    if idle is not None:  # the same consumer still works after a cancelled receive
        assert idle.message.body == b"raced"
        await idle.ack()
        await consumer.close()
        return
    await consumer.close()
    async with broker.consumer(dest, group) as later:
        await collect_all(later, [b"raced"], timing)


async def test_cancelling_a_pending_receive_is_clean(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """A receive() cancelled while waiting leaves the consumer usable, and a later consumer gets later messages."""
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        pending = asyncio.create_task(consumer.receive(timeout=timing.receive))
        await asyncio.sleep(0.2)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await broker.producer(dest).send(b"after cancel")
        await collect_all(consumer, [b"after cancel"], timing)
    async with broker.consumer(dest, group) as later:
        await broker.producer(dest).send(b"next consumer")
        await collect_all(later, [b"next consumer"], timing)


@pytest.mark.requires("persistence")
async def test_close_with_unacked_messages_redelivers(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Messages received but not settled when a consumer closes go to the next consumer, with the next attempt."""
    dest, group = await queue(broker, names)
    sent = bodies(3, "inflight")
    await broker.producer(dest).send_many(sent)
    async with broker.consumer(dest, group, lock_timeout=timing.lock) as first:
        held = await collect(first, 3, timing, ack=False)
        assert len(held) == 3, f"only {len(held)} of 3 arrived"
    async with broker.consumer(dest, group, lock_timeout=timing.lock) as second:
        again = await collect_all(second, sent, timing)
    for delivery in again:
        assert delivery.attempt >= 2, f"a redelivery counts as a new attempt: {describe(delivery)}"


@pytest.mark.requires("persistence")
async def test_reopening_continues_without_loss(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Consumers opened and closed in turn, each taking a few messages: together they get everything."""
    dest, group = await queue(broker, names)
    sent = set(bodies(60, "reopen"))
    await broker.producer(dest).send_many(sorted(sent))
    seen: set[bytes] = set()
    for _ in range(12):
        if seen == sent:
            break
        async with broker.consumer(dest, group, prefetch=5, lock_timeout=timing.lock) as consumer:
            seen.update(d.message.body for d in await collect(consumer, 10, timing))
    assert seen == sent, f"{len(sent - seen)} of {len(sent)} messages lost across reopened consumers"


async def test_closing_one_consumer_leaves_others_working(broker: unimq.Broker, names: Names,
                                                          timing: Timing) -> None:
    (one, g1), (two, g2) = await queue(broker, names), await queue(broker, names, names())
    first = await broker.consumer(one, g1).open()
    async with broker.consumer(two, g2) as second:
        await first.close()
        await broker.producer(two).send(b"still here")
        await collect_all(second, [b"still here"], timing)


async def test_concurrent_open_and_close_then_receive(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Ten consumers opened and closed at once; a consumer afterwards still gets everything sent."""
    dest, group = await queue(broker, names)

    async def churn() -> None:
        async with broker.consumer(dest, group) as consumer:
            await consumer.receive(timeout=0.05)

    await asyncio.wait_for(asyncio.gather(*(churn() for _ in range(10))), timing.receive)
    sent = bodies(20, "churn")
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send_many(sent)
        await collect_all(consumer, sent, timing)
        await expect_nothing(consumer, timing, "an acked message was delivered again")


async def test_concurrent_producers(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Ten tasks sending through one producer at once: every message arrives."""
    dest, group = await queue(broker, names)
    producer = broker.producer(dest)

    async def send(task: int) -> None:
        for body in bodies(10, f"p{task}"):
            await producer.send(body)

    async with broker.consumer(dest, group) as consumer:
        await asyncio.gather(*(send(t) for t in range(10)))
        await collect_all(consumer, [b for t in range(10) for b in bodies(10, f"p{t}")], timing)
