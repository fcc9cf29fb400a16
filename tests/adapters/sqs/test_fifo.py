"""FIFO queues: key → MessageGroupId ordering, message_id → MessageDeduplicationId de-duplication."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta

import pytest

import unimq


async def test_per_key_order_with_competing_consumers(fifo_broker: unimq.Broker, name: str) -> None:
    await fifo_broker.ensure(name)
    keys = ["a", "b", "c", "d"]
    messages = [unimq.Message(body=f"{k}-{i}".encode(), key=k) for i in range(15) for k in keys]
    await fifo_broker.producer(name).send_many(messages)
    seen: dict[str, list[int]] = defaultdict(list)

    async def consume() -> None:
        async with fifo_broker.consumer(name, prefetch=10) as consumer:
            while sum(map(len, seen.values())) < len(messages):
                delivery = await consumer.receive(timeout=3)
                if delivery is None:
                    return
                key, _, index = delivery.message.body.decode().partition("-")
                assert delivery.message.key == key
                seen[key].append(int(index))
                await delivery.ack()

    await asyncio.wait_for(asyncio.gather(consume(), consume()), 30)
    assert {k: v for k, v in seen.items()} == {k: list(range(15)) for k in keys}


async def test_group_blocks_while_in_flight(fifo_broker: unimq.Broker, name: str) -> None:
    await fifo_broker.ensure(name)
    producer = fifo_broker.producer(name)
    await producer.send(b"k-1", key="k")
    await producer.send(b"k-2", key="k")
    async with fifo_broker.consumer(name, lock_timeout=5) as first:
        got = await first.receive(timeout=5)
        assert got is not None and got.message.body == b"k-1"
        async with fifo_broker.consumer(name) as second:
            assert await second.receive(timeout=1.5) is None  # k-2 waits for k-1 to settle
        await got.ack()
        nxt = await first.receive(timeout=5)
        assert nxt is not None and nxt.message.body == b"k-2"
        await nxt.ack()


async def test_deduplication_by_message_id(fifo_broker: unimq.Broker, name: str) -> None:
    await fifo_broker.ensure(name, deduplication=timedelta(minutes=5))
    producer = fifo_broker.producer(name)
    await producer.send(b"once", message_id="order-1")
    await producer.send(b"twice", message_id="order-1")
    await producer.send(b"other", message_id="order-2")
    async with fifo_broker.consumer(name) as consumer:
        got = await consumer.receive_many(3, 3)
        for d in got:
            await d.ack()
    bodies = [d.message.body for d in got]
    assert bodies == [b"once", b"other"]


async def test_messages_without_key_share_the_default_group(fifo_broker: unimq.Broker, name: str) -> None:
    await fifo_broker.ensure(name)
    await fifo_broker.producer(name).send_many([b"1", b"2", b"3"])
    async with fifo_broker.consumer(name) as consumer:
        got = await consumer.receive_many(3, 5)
        assert [d.message.body for d in got] == [b"1", b"2", b"3"]
        assert [d.message.key for d in got] == [None, None, None]
        assert got[0].native["Attributes"]["MessageGroupId"] == "unimq-default"
        for d in got:
            await d.ack()


async def test_fifo_refuses_per_message_delay_and_long_dedup(fifo_broker: unimq.Broker, name: str) -> None:
    caps = fifo_broker.capabilities_for(name)
    assert (caps.ordering, caps.delayed_delivery.support.value, caps.deduplication.limit) == ("per_key", "none", 300)
    await fifo_broker.ensure(name)
    with pytest.raises(unimq.CapabilityError, match="delayed_delivery"):
        await fifo_broker.producer(name).send(b"x", delay=timedelta(seconds=5))
    with pytest.raises(unimq.CapabilityError, match="limit is 300"):
        await fifo_broker.ensure(name, deduplication=timedelta(minutes=10))


async def test_fifo_name_in_standard_mode(broker: unimq.Broker, name: str) -> None:
    fifo = name + ".fifo"
    assert broker.capabilities_for(fifo).ordering == "per_key"
    assert broker.capabilities_for(name).ordering == "none"
    assert broker._driver.dead_letter_destination(fifo) == f"{name}-dlq.fifo"
    await broker.ensure(fifo)
    await broker.producer(fifo).send(b"x", key="k")
    async with broker.consumer(fifo) as consumer:
        d = await consumer.receive(timeout=5)
        assert d is not None and d.message.key == "k"
        await d.ack()
    with pytest.raises(unimq.CapabilityError, match="fifo"):  # a standard queue name: the core refuses
        await broker.ensure(name, fifo=True)
    with pytest.raises(unimq.ConfigError, match=r"\.fifo"):
        await broker.ensure(fifo, fifo=False)
    await broker.ensure(fifo, fifo=True, sessions=True)  # message groups are always on in a FIFO queue
