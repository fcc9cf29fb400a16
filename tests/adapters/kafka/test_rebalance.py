"""A second consumer joins and leaves a group mid-stream: nothing is lost; duplicates are counted."""

from __future__ import annotations

import asyncio
import collections

import unimq

TOTAL = 3000
PARTITIONS = 4


async def _drain(consumer: unimq.Consumer, seen: collections.Counter[bytes], stop: asyncio.Event,
                 delay: float = 0.0) -> None:
    while not stop.is_set():
        delivery = await consumer.receive(timeout=0.2)
        if delivery is None:
            continue
        seen[delivery.message.body] += 1
        if delay:
            await asyncio.sleep(delay)
        await delivery.ack()


async def test_join_and_leave_mid_stream_loses_nothing(broker: unimq.Broker, topic: str) -> None:
    group = "rebalance"
    await broker.ensure(topic, partitions=PARTITIONS, groups=(group,))
    producer = broker.producer(topic)
    bodies = [f"m-{i}".encode() for i in range(TOTAL)]
    seen: collections.Counter[bytes] = collections.Counter()
    stop = asyncio.Event()

    async def produce() -> None:
        for start in range(0, TOTAL, 100):
            await producer.send_many([unimq.Message(body=b, key=str(i % 16))
                                      for i, b in enumerate(bodies[start:start + 100], start)])
            await asyncio.sleep(0.02)

    async with broker.consumer(topic, group, prefetch=50) as first:
        main = asyncio.create_task(_drain(first, seen, stop, delay=0.0005))
        feeding = asyncio.create_task(produce())
        await _until(lambda: sum(seen.values()) >= TOTAL // 4, 60)
        async with broker.consumer(topic, group, prefetch=50) as second:
            second_stop = asyncio.Event()
            other = asyncio.create_task(_drain(second, seen, second_stop, delay=0.0005))
            await _until(lambda: sum(seen.values()) >= TOTAL // 2, 60)
            second_stop.set()
            await other
        await feeding
        complete = await _until(lambda: set(seen) >= set(bodies), 60)
        stop.set()
        await main
    missing = set(bodies) - set(seen)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    print(f"\nrebalance: {TOTAL} sent, {len(seen)} distinct received, {duplicates} duplicates, {len(missing)} missing")
    assert complete and not missing, f"{len(missing)} messages lost, e.g. {sorted(missing)[:5]}"
    stats = await broker.stats(topic, group)
    assert stats.lag == 0, f"everything was acked, so the committed offsets must reach the end: {stats}"


async def _until(predicate: collections.abc.Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
