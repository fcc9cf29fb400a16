"""Batching: send_many uses native batches, delivers everything, and refuses bad batches up front."""

from __future__ import annotations

import pytest

import unimq
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import bodies, collect_all, expect_nothing, oversize, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio

BULK = 1000


async def test_send_many_delivers_every_batch(broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                              timing: Timing) -> None:
    """Three times the batch limit (at most 300 messages), so that several native batches are sent."""
    limit = int(caps.batch_send.limit) if caps.batch_send.limit else 100
    sent = bodies(min(300, 3 * limit), "batch")
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        returned = await broker.producer(dest).send_many(sent)
        assert [m.body for m in returned] == sent, "send_many returns the sent messages, in order"
        await collect_all(consumer, sent, timing)


async def test_send_many_with_an_oversize_message_sends_nothing(broker: unimq.Broker, names: Names,
                                                                caps: unimq.Capabilities, timing: Timing) -> None:
    """One oversize message fails the whole send_many with MessageTooLarge before anything is sent."""
    dest, group = await queue(broker, names)
    batch = [b"before", oversize(caps), b"after"]
    with pytest.raises(unimq.MessageTooLarge):
        await broker.producer(dest).send_many(batch)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(b"marker")
        await collect_all(consumer, [b"marker"], timing)  # fails on "before" or "after"
        await expect_nothing(consumer, timing, "part of a refused batch was sent")


async def test_bulk_send_many(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """The one larger test: 1000 messages through send_many and a consumer with prefetch 200."""
    sent = bodies(BULK, "bulk")
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group, prefetch=200) as consumer:
        await broker.producer(dest).send_many(sent)
        await collect_all(consumer, sent, timing)
