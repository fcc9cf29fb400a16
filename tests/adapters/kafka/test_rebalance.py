"""A second consumer joins and leaves a group mid-stream: nothing is lost; duplicates are counted
(and none of the records a consumer held unread at the revoke)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import pytest

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


@pytest.mark.parametrize("client", [
    "aiokafka", pytest.param("confluent", marks=pytest.mark.needs_broker("kafka-confluent"))])
async def test_a_revoked_partitions_unread_records_are_not_handed_out(
        client: str, broker: unimq.Broker, topic: str, broker_url: Callable[[str], str]) -> None:
    """Records the first consumer's core holds unread when a second member takes their partitions
    are forgotten, not handed out: the new owner reads them, and each is processed once (handed
    out as well, they would be processed twice and stall the rebalance for REVOKE_WAIT)."""
    if client == "aiokafka":
        await _unread_records_of_revoked_partitions(broker, topic)
    else:
        async with unimq.connect(broker_url("kafka-confluent")) as confluent:
            await _unread_records_of_revoked_partitions(confluent, topic)


async def _unread_records_of_revoked_partitions(broker: unimq.Broker, topic: str) -> None:
    group = "unread"
    await broker.ensure(topic, partitions=PARTITIONS, groups=(group,))
    bodies = [f"u-{i}".encode() for i in range(40)]
    await broker.producer(topic).send_many([unimq.Message(body=b, key=str(i)) for i, b in enumerate(bodies)])
    seen: collections.Counter[bytes] = collections.Counter()
    async with broker.consumer(topic, group, prefetch=100) as first:
        await asyncio.sleep(1.0)  # every record reaches the consumer: the first receive buffers them all
        delivery = await first.receive(timeout=10)
        assert delivery is not None
        seen[delivery.message.body] += 1
        await delivery.ack()
        async with broker.consumer(topic, group, prefetch=100) as second:
            stop = asyncio.Event()
            drains = [asyncio.create_task(_drain(c, seen, stop)) for c in (first, second)]
            await _until(lambda: set(seen) >= set(bodies), 30)
            await asyncio.sleep(2.0)  # a duplicate would arrive meanwhile
            stop.set()
            await asyncio.gather(*drains)
    assert set(seen) == set(bodies), f"missing: {sorted(set(bodies) - set(seen))}"
    twice = sorted(body for body, n in seen.items() if n > 1)
    assert not twice, f"{len(twice)} records processed twice: {twice[:5]}"


async def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
