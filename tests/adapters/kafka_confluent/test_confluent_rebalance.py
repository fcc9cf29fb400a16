"""Rebalance safety on librdkafka: a second consumer joins and leaves a group mid-stream while the
first holds unacked messages; the revoke runs in the poll thread and waits for the event loop."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import pytest

import unimq

pytestmark = pytest.mark.needs_broker("kafka-confluent")

TOTAL = 2000
PARTITIONS = 4


async def _drain(consumer: unimq.Consumer, seen: collections.Counter[bytes], stop: asyncio.Event) -> None:
    while not stop.is_set():
        delivery = await consumer.receive(timeout=0.2)
        if delivery is None:
            continue
        seen[delivery.message.body] += 1
        await asyncio.sleep(0.0005)  # a handler that takes a moment: messages are in flight at the revoke
        await delivery.ack()


async def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_join_and_leave_mid_stream_loses_nothing(confluent: unimq.Broker, topic: str) -> None:
    group = "rebalance"
    await confluent.ensure(topic, partitions=PARTITIONS, groups=(group,))
    producer = confluent.producer(topic)
    bodies = [f"m-{i}".encode() for i in range(TOTAL)]
    seen: collections.Counter[bytes] = collections.Counter()
    stop = asyncio.Event()

    async def produce() -> None:
        for start in range(0, TOTAL, 100):
            await producer.send_many([unimq.Message(body=b, key=str(i % 16))
                                      for i, b in enumerate(bodies[start:start + 100], start)])
            await asyncio.sleep(0.02)

    async with confluent.consumer(topic, group, prefetch=50) as first:
        main = asyncio.create_task(_drain(first, seen, stop))
        feeding = asyncio.create_task(produce())
        assert await _until(lambda: sum(seen.values()) >= TOTAL // 4, 60), "the first consumer got too little"
        async with confluent.consumer(topic, group, prefetch=50) as second:
            second_stop = asyncio.Event()
            other = asyncio.create_task(_drain(second, seen, second_stop))
            await _until(lambda: sum(seen.values()) >= TOTAL // 2, 60)
            second_stop.set()
            await other
        await feeding
        complete = await _until(lambda: set(seen) >= set(bodies), 60)
        stop.set()
        await main
    missing = set(bodies) - set(seen)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    assert complete and not missing, f"{len(missing)} messages lost, e.g. {sorted(missing)[:5]}"
    # Acked work is committed on revoke: only what was in flight may come again.
    assert duplicates <= TOTAL // 10, f"{duplicates} duplicates: acked messages were redelivered"
    stats = await confluent.stats(topic, group)
    assert stats.lag == 0, f"everything was acked, so the committed offsets must reach the end: {stats}"
