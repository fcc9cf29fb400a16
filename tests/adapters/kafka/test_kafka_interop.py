"""Interop with plain aiokafka, both directions: value bytes and headers arrive unchanged."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

import unimq

BINARY = bytes(range(256))  # not valid UTF-8: must pass untouched


async def test_plain_aiokafka_to_unimq(broker: unimq.Broker, topic: str, bootstrap: str) -> None:
    await broker.ensure(topic, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, BINARY, key=b"k1", headers=[
            ("trace", b"abc"), ("blob", b"\xff\xfe\x00raw"), ("message-id", b"m-1"),
            ("correlation-id", b"c-1"), ("content-type", b"application/octet-stream"),
        ])
        await producer.send_and_wait(topic, b"no headers")
    finally:
        await producer.stop()
    async with broker.consumer(topic, start="earliest") as consumer:
        first = await consumer.receive(timeout=15)
        second = await consumer.receive(timeout=15)
    assert first is not None and second is not None
    m = first.message
    assert m.body == BINARY
    assert m.key == "k1"
    assert m.message_id == "m-1"
    assert m.correlation_id == "c-1"
    assert m.content_type == "application/octet-stream"
    assert m.headers["trace"] == "abc"
    assert m.headers["blob"].encode("utf-8", "surrogateescape") == b"\xff\xfe\x00raw"
    assert first.attempt == 1
    assert first.native.value == BINARY, "delivery.native is the ConsumerRecord"
    # A plain record without message-id gets a stable id from its position.
    assert second.message.message_id == f"{topic}-0-{second.native.offset}"
    assert second.message.headers == {}


async def test_unimq_to_plain_aiokafka(broker: unimq.Broker, topic: str, bootstrap: str) -> None:
    await broker.ensure(topic, partitions=1)
    blob = b"\xff\xfe\x00raw".decode("utf-8", "surrogateescape")
    sent = await broker.producer(topic).send(
        BINARY, key="k2", headers={"trace": "xyz", "blob": blob, "unicode": "žluťoučký"},
        correlation_id="c-2", reply_to="replies", content_type="application/x-test",
    )
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"plain-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.value == BINARY
    assert record.key == b"k2"
    headers = dict(record.headers)
    assert headers["trace"] == b"xyz"
    assert headers["blob"] == b"\xff\xfe\x00raw"
    assert headers["unicode"] == "žluťoučký".encode()
    assert headers["message-id"] == sent.message_id.encode()
    assert headers["correlation-id"] == b"c-2"
    assert headers["reply-to"] == b"replies"
    assert headers["content-type"] == b"application/x-test"
    assert not any(name.startswith("x-unimq-") for name in headers), "no emulation headers on a plain send"


async def test_escape_hatch_is_the_aiokafka_producer(broker: unimq.Broker) -> None:
    assert isinstance(broker.native, AIOKafkaProducer)
