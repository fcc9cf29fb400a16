"""``send_many`` through whole record batches (unimq_kafka.batches), on the real broker."""

from __future__ import annotations

import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

import unimq

PARTITIONS = 4


def _with(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


async def _records(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"plain-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"only {len(records)} of {count} records arrived"
            for part in batch.values():
                records += part
    finally:
        await consumer.stop()
    return records


async def test_keys_go_to_the_partition_plain_aiokafka_picks(broker: unimq.Broker, topic: str, bootstrap: str) -> None:
    """Same murmur2 partitioning as every Kafka client, so per-key order holds across producers."""
    await broker.ensure(topic, partitions=PARTITIONS)
    keys = [f"key-{i}" for i in range(20)]
    await broker.producer(topic).send_many([unimq.Message(body=k.encode(), key=k) for k in keys])
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await plain.start()
    try:
        expected = {k: (await plain.send_and_wait(topic, b"plain", key=k.encode())).partition for k in keys}
    finally:
        await plain.stop()
    records = await _records(bootstrap, topic, 2 * len(keys))
    got = {r.key.decode(): r.partition for r in records if r.value != b"plain"}
    assert got == expected
    assert len(set(expected.values())) > 1, "20 keys over 4 partitions should not all hash alike"


async def test_many_batches_keep_per_key_order_and_lose_nothing(kafka_url: str, topic: str, bootstrap: str) -> None:
    """5,000 records in 1 KiB-limited batches (hundreds of batches), keyed and unkeyed mixed."""
    async with unimq.connect(_with(kafka_url, "max_batch_size=1024")) as small:
        await small.ensure(topic, partitions=PARTITIONS)
        messages = [unimq.Message(body=b"%d:%d" % (i % 7, i) + b"." * 100, key=None if i % 3 == 0 else f"k{i % 7}")
                    for i in range(5_000)]
        sent = await small.producer(topic).send_many(messages)
    assert [m.message_id for m in sent] == [m.message_id for m in messages]
    records = await _records(bootstrap, topic, len(messages))
    assert sorted(dict(r.headers)["message-id"].decode() for r in records) == sorted(m.message_id for m in messages)
    unkeyed_partitions = {r.partition for r in records if r.key is None}
    assert len(unkeyed_partitions) > 1, "unkeyed records stick to a partition per batch, not forever"
    for key in {r.key for r in records if r.key is not None}:
        sequence = [int(r.value.split(b":")[1].rstrip(b".")) for r in records if r.key == key]
        assert sequence == sorted(sequence), f"{key!r} reordered"


async def test_a_record_larger_than_a_batch_is_sent_on_its_own(kafka_url: str, topic: str, bootstrap: str) -> None:
    async with unimq.connect(_with(kafka_url, "max_batch_size=1024")) as small:
        await small.ensure(topic, partitions=1)
        bodies = [b"small-1", b"L" * 50_000, b"small-2"]
        await small.producer(topic).send_many(bodies)
    records = await _records(bootstrap, topic, 3)
    assert [r.value for r in records] == bodies
