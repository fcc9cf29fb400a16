"""The two Kafka drivers on one cluster: the same bytes on the wire, the same topic and group
names, the same ``max_deliveries`` metadata."""

from __future__ import annotations

import asyncio
import collections

import pytest

import unimq

pytestmark = [pytest.mark.needs_broker("kafka"), pytest.mark.needs_broker("kafka-confluent")]

BINARY = bytes(range(256))  # not valid UTF-8: must pass untouched
WAIT = 30.0


async def _one(broker: unimq.Broker, topic: str, group: str) -> unimq.Delivery:
    async with broker.consumer(topic, group, start="earliest") as consumer:
        delivery = await consumer.receive(timeout=WAIT)
        assert delivery is not None, f"nothing arrived on {topic} within {WAIT}s"
        await delivery.ack()
        return delivery


async def _send(broker: unimq.Broker, topic: str) -> None:
    await broker.producer(topic).send(BINARY, key="k1", message_id="m-1", correlation_id="c-1",
                                      content_type="application/octet-stream",
                                      headers={"trace": "abc", "blob": "\udcff\udcfe raw"})


def _check(delivery: unimq.Delivery) -> None:
    m = delivery.message
    assert m.body == BINARY
    assert (m.key, m.message_id, m.correlation_id) == ("k1", "m-1", "c-1")
    assert m.content_type == "application/octet-stream"
    assert m.headers == {"trace": "abc", "blob": "\udcff\udcfe raw"}
    assert delivery.attempt == 1


async def test_aiokafka_driver_to_confluent_driver(aiokafka: unimq.Broker, confluent: unimq.Broker,
                                                   topic: str) -> None:
    await aiokafka.ensure(topic, partitions=1, groups=(topic,))
    await _send(aiokafka, topic)
    delivery = await _one(confluent, topic, topic)
    _check(delivery)
    assert delivery.native.value() == BINARY, "delivery.native is the confluent_kafka.Message"


async def test_confluent_driver_to_aiokafka_driver(aiokafka: unimq.Broker, confluent: unimq.Broker,
                                                   topic: str) -> None:
    await confluent.ensure(topic, partitions=1, groups=(topic,))
    await _send(confluent, topic)
    delivery = await _one(aiokafka, topic, topic)
    _check(delivery)
    assert delivery.native.value == BINARY, "delivery.native is aiokafka's ConsumerRecord"


async def test_a_key_lands_on_the_same_partition_through_either_driver(aiokafka: unimq.Broker,
                                                                       confluent: unimq.Broker, topic: str) -> None:
    """librdkafka is set to Java's murmur2 partitioner, as aiokafka: per-key order survives mixed producers."""
    await aiokafka.ensure(topic, partitions=6, groups=(topic,))
    keys = [f"key-{i}" for i in range(12)]
    for key in keys:
        await aiokafka.producer(topic).send(b"a", key=key)
        await confluent.producer(topic).send(b"c", key=key)
    seen: dict[tuple[str | None, bytes], int] = {}
    async with confluent.consumer(topic, topic, start="earliest") as consumer:
        while len(seen) < 2 * len(keys):
            batch = await consumer.receive_batch(100, timeout=WAIT)
            assert batch, f"only {len(seen)} of {2 * len(keys)} records arrived"
            for delivery in batch:
                seen[(delivery.message.key, delivery.message.body)] = delivery.native.partition()
            await consumer.ack_many(batch)
    for key in keys:
        assert seen[(key, b"a")] == seen[(key, b"c")], f"{key} went to different partitions"


async def test_max_deliveries_ensured_by_aiokafka_is_enforced_by_confluent(aiokafka: unimq.Broker,
                                                                          confluent: unimq.Broker,
                                                                          topic: str) -> None:
    """ensure() in one driver, poison consumed through the other: the limit travels in __unimq_meta."""
    await aiokafka.ensure(topic, partitions=1, groups=(topic,), max_deliveries=2)
    await aiokafka.producer(topic).send(b"poison", message_id="p-1")
    attempts = []
    async with confluent.consumer(topic, topic, start="earliest") as consumer:
        for _ in range(2):
            delivery = await consumer.receive(timeout=WAIT)
            assert delivery is not None
            attempts.append(delivery.attempt)
            await delivery.nack()
        assert await consumer.receive(timeout=3.0) is None, "a third attempt was handed out"
    assert attempts == [1, 2]
    dead = await _one(aiokafka, f"{topic}.dlq", "dlq-reader")
    assert dead.message.message_id == "p-1"
    assert dead.message.body == b"poison"


async def test_consumers_of_both_drivers_share_a_group(aiokafka: unimq.Broker, confluent: unimq.Broker,
                                                       topic: str) -> None:
    """Same assignor (roundrobin) on both sides: the broker accepts the mix and splits the partitions."""
    await aiokafka.ensure(topic, partitions=4, groups=(topic,))
    total = 200
    seen: collections.Counter[str] = collections.Counter()
    bodies: set[bytes] = set()
    async with aiokafka.consumer(topic, topic) as first, confluent.consumer(topic, topic) as second:
        await aiokafka.producer(topic).send_many([unimq.Message(body=f"m{i}".encode(), key=f"k{i}")
                                                  for i in range(total)])

        async def drain(consumer: unimq.Consumer, name: str) -> None:
            while len(bodies) < total:
                got = await consumer.receive_batch(100, timeout=0.5)
                seen[name] += len(got)
                bodies.update(d.message.body for d in got)
                if got:
                    await consumer.ack_many(got)

        await asyncio.wait_for(asyncio.gather(drain(first, "aiokafka"), drain(second, "confluent")), WAIT * 2)
    assert len(bodies) == total
    assert seen["aiokafka"] and seen["confluent"], f"one member got everything: {dict(seen)}"
