"""The confluent reader's hand-over between its poll thread and the event loop: a bounded read-ahead
(converted deliveries are what the cyclic GC pays for), a wake-up only for a receive that waits,
and records of several partitions converted in runs without losing or repeating one."""

from __future__ import annotations

import asyncio
import time

import pytest
from unimq_kafka_confluent.subscription import READ_AHEAD, ConfluentSubscription

import unimq

pytestmark = pytest.mark.needs_broker("kafka-confluent")


async def test_a_waiting_receive_is_woken_by_a_new_record(confluent: unimq.Broker, topic: str) -> None:
    await confluent.ensure(topic, groups=("wake",))
    async with confluent.consumer(topic, "wake") as consumer:
        assert await consumer.receive(timeout=0.5) is None
        waiting = asyncio.create_task(consumer.receive(timeout=20))
        await asyncio.sleep(0.3)
        sent = time.monotonic()
        await confluent.producer(topic).send(b"late")
        delivery = await asyncio.wait_for(waiting, 20)
        assert delivery is not None and delivery.message.body == b"late"
        # Woken by the poll thread, not found at the end of the 20 s wait.
        assert time.monotonic() - sent < 5
        await delivery.ack()


async def test_read_ahead_stays_bounded_and_every_record_arrives_once(confluent: unimq.Broker, topic: str) -> None:
    total = 3000
    await confluent.ensure(topic, partitions=3, groups=("ahead",))
    await confluent.producer(topic).send_many(
        [unimq.Message(body=f"m-{i}".encode(), key=str(i % 7), headers={"n": str(i)} if i % 2 else {})
         for i in range(total)])
    seen: dict[bytes, int] = {}
    async with confluent.consumer(topic, "ahead", prefetch=1000) as consumer:
        first = await consumer.receive_batch(10, timeout=20)
        assert first
        subscription = consumer.subscription
        assert isinstance(subscription, ConfluentSubscription)
        await asyncio.sleep(0.5)  # the poll thread fills what it may
        # Refills start at half of READ_AHEAD, and take at most READ_AHEAD records.
        assert len(subscription._buffer) <= READ_AHEAD + READ_AHEAD // 2
        batch = first
        deadline = time.monotonic() + 60
        while True:
            for delivery in batch:
                seen[delivery.message.body] = seen.get(delivery.message.body, 0) + 1
                number = int(delivery.message.body[2:])
                assert delivery.message.headers == ({"n": str(number)} if number % 2 else {})
                assert delivery.message.message_id and delivery.attempt == 1
            await consumer.ack_many(batch)
            if len(seen) == total or time.monotonic() > deadline:
                break
            batch = await consumer.receive_batch(1000, timeout=1)
    assert len(seen) == total
    assert set(seen.values()) == {1}
    async with confluent.consumer(topic, "ahead") as again:
        assert await again.receive(timeout=3) is None  # every ack was committed on close


async def test_message_ids_from_the_header_or_the_stable_id(confluent: unimq.Broker, topic: str) -> None:
    """Records written by another client: the one-header fast path and the general conversion agree."""
    await confluent.ensure(topic, partitions=1, groups=("ids",))
    for body, headers in ((b"a", [("message-id", b"abc")]), (b"b", [("message-id", b"")]), (b"c", None),
                          (b"d", [("message-id", b"xyz"), ("n", b"1")])):
        confluent.native.produce(topic, body, headers=headers)
    got: dict[bytes, unimq.Message] = {}
    async with confluent.consumer(topic, "ids") as consumer:
        deadline = time.monotonic() + 20
        while len(got) < 4 and time.monotonic() < deadline:
            for delivery in await consumer.receive_batch(10, timeout=1):
                got[delivery.message.body] = delivery.message
                await delivery.ack()
    assert {body: m.message_id for body, m in got.items()} == {
        b"a": "abc", b"b": f"{topic}-0-1", b"c": f"{topic}-0-2", b"d": "xyz"}
    assert got[b"a"].headers == {} and got[b"d"].headers == {"n": "1"}
    assert all(m.timestamp is not None for m in got.values())
