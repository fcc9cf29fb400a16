"""Interop with plain aio-pika, both ways: body bytes and properties unchanged, no envelope."""

from __future__ import annotations

from datetime import UTC, datetime

import aio_pika
import pytest

import unimq

pytestmark = pytest.mark.needs_broker("rabbitmq")

BODY = b"\x00\xffnot-json\xc3\x28"


async def test_aio_pika_publisher_to_unimq_group(
    broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel, dest: str
) -> None:
    """A plain publish to the destination's exchange reaches a unimq group, every property mapped."""
    await broker.ensure(dest, groups=("billing",))
    exchange = await raw.get_exchange(dest)
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    await exchange.publish(
        aio_pika.Message(
            BODY, message_id="m-1", correlation_id="c-1", reply_to="replies", content_type="application/x-test",
            timestamp=stamp, headers={"tenant": "t1", "n": 7}, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key="customer-42",
    )
    async with broker.consumer(dest, "billing") as consumer:
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None
        await delivery.ack()
    message = delivery.message
    assert message.body == BODY
    assert (message.message_id, message.correlation_id, message.reply_to) == ("m-1", "c-1", "replies")
    assert message.content_type == "application/x-test"
    assert message.timestamp == stamp
    assert message.key == "customer-42"
    assert message.headers == {"tenant": "t1", "n": "7"}, "AMQP header values arrive as strings"
    assert delivery.attempt == 1
    assert isinstance(delivery.native, aio_pika.abc.AbstractIncomingMessage)


async def test_default_exchange_publisher_reaches_default_group(
    broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel, dest: str
) -> None:
    """An existing app publishing to the default exchange with routing key = queue name reaches group None."""
    await broker.ensure(dest)
    await raw.default_exchange.publish(aio_pika.Message(BODY, message_id="legacy"), routing_key=dest)
    async with broker.consumer(dest) as consumer:
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None
        await delivery.ack()
    assert delivery.message.body == BODY
    assert delivery.message.message_id == "legacy"
    assert delivery.message.key is None, "the default exchange's routing key is the queue, not a key"


async def test_existing_plain_queue_is_used_as_is(
    broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel, dest: str
) -> None:
    """group=None adopts a queue declared by another app, even with other arguments, and binds it."""
    await raw.declare_queue(dest, durable=True, arguments={"x-max-length": 1000})
    async with broker.consumer(dest) as consumer:
        await broker.producer(dest).send(b"to-existing")
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None and delivery.message.body == b"to-existing"
        await delivery.ack()


async def test_unimq_publisher_to_aio_pika_consumer(
    broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel, dest: str
) -> None:
    """A unimq send is read by plain aio-pika from the group's queue: body, properties, key, persistence."""
    await broker.ensure(dest, groups=("audit",))
    sent = await broker.producer(dest).send(
        BODY, key="customer-42", headers={"tenant": "t1"}, correlation_id="c-9", reply_to="replies",
        content_type="application/octet-stream", priority=3 if broker.capabilities_for(dest).priority else None,
    )
    queue = await raw.declare_queue(f"{dest}.audit", passive=True)
    incoming = await queue.get(timeout=5)
    await incoming.ack()
    assert incoming.body == BODY
    assert incoming.message_id == sent.message_id
    assert (incoming.correlation_id, incoming.reply_to) == ("c-9", "replies")
    assert incoming.content_type == "application/octet-stream"
    assert incoming.routing_key == "customer-42"
    assert incoming.exchange == dest
    headers = {k: v for k, v in (incoming.headers or {}).items() if k != "x-delivery-count"}  # quorum adds it
    assert headers == {"tenant": "t1"}, "no unimq envelope headers on a plain send"
    assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert incoming.timestamp is not None
    if broker.capabilities_for(dest).priority:
        assert incoming.priority == 3


async def test_unimq_default_group_is_the_plain_queue(
    broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel, dest: str
) -> None:
    """The default group's queue is named like the destination, for existing consumers of that queue."""
    await broker.ensure(dest)
    await broker.producer(dest).send(BODY)
    queue = await raw.declare_queue(dest, passive=True)
    incoming = await queue.get(timeout=5)
    await incoming.ack()
    assert incoming.body == BODY

