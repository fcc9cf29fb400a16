"""Interop with the plain azure-servicebus SDK, both directions: body bytes and properties unchanged."""

from __future__ import annotations

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

import unimq

BODY = bytes(range(256)) + b'{"order": 42}'


async def test_sdk_to_unimq(broker: unimq.Broker, sdk: ServiceBusClient, name: str) -> None:
    await broker.ensure(name)
    async with sdk.get_queue_sender(name) as sender:
        await sender.send_messages(ServiceBusMessage(
            BODY, application_properties={"tenant": "acme", "count": 7, "ok": True},
            message_id="m-1", correlation_id="c-1", reply_to="replies", content_type="application/octet-stream",
            subject="orders", partition_key="customer-1",
        ))
    async with broker.consumer(name) as consumer:
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None
        message = delivery.message
        assert message.body == BODY
        assert message.headers == {"tenant": "acme", "count": "7", "ok": "true"}
        assert (message.message_id, message.correlation_id, message.reply_to, message.content_type, message.key) == (
            "m-1", "c-1", "replies", "application/octet-stream", "customer-1")
        assert message.timestamp is not None
        assert delivery.attempt == 1
        assert delivery.native.subject == "orders", "the SDK message is the escape hatch"
        await delivery.ack()
    async with sdk.get_queue_receiver(name) as receiver:
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=1) == []


async def test_unimq_to_sdk(broker: unimq.Broker, sdk: ServiceBusClient, name: str) -> None:
    await broker.ensure(name)
    sent = await broker.producer(name).send(
        BODY, key="customer-1", headers={"tenant": "acme", "ключ": "значение"}, correlation_id="c-1",
        reply_to="replies", content_type="text/plain",
    )
    async with sdk.get_queue_receiver(name) as receiver:
        [got] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
        assert b"".join(got.body) == BODY
        assert len(list(got.raw_amqp_message.body)) == 1, "one data section"
        props = {k.decode(): v.decode() for k, v in (got.application_properties or {}).items()}
        assert props == {"tenant": "acme", "ключ": "значение"}
        assert (got.message_id, got.correlation_id, got.reply_to, got.content_type, got.partition_key) == (
            sent.message_id, "c-1", "replies", "text/plain", "customer-1")
        assert got.delivery_count == 0
        await receiver.complete_message(got)


async def test_unimq_reject_seen_by_sdk(broker: unimq.Broker, sdk: ServiceBusClient, name: str) -> None:
    """reject() is a native dead-letter: plain tools see DeadLetterReason/ErrorDescription."""
    await broker.ensure(name)
    await broker.producer(name).send(b"poison")
    async with broker.consumer(name) as consumer:
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None
        await delivery.reject("ValueError: bad\ntraceback line")
    from azure.servicebus import ServiceBusSubQueue

    async with sdk.get_queue_receiver(name, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as receiver:
        [dead] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
        assert b"".join(dead.body) == b"poison"
        assert dead.dead_letter_reason == "ValueError: bad"
        assert dead.dead_letter_error_description == "ValueError: bad\ntraceback line"
        await receiver.complete_message(dead)


async def test_sdk_dead_letter_read_through_unimq(broker: unimq.Broker, sdk: ServiceBusClient, name: str) -> None:
    await broker.ensure(name)
    async with sdk.get_queue_sender(name) as sender:
        await sender.send_messages(ServiceBusMessage(b"x", application_properties={"k": "v"}))
    async with sdk.get_queue_receiver(name) as receiver:
        [got] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
        await receiver.dead_letter_message(got, reason="Invalid", error_description="no field 'order'")
    async with broker.consumer(broker.dead_letter_destination(name)) as consumer:
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None
        assert delivery.message.headers == {"k": "v", "x-unimq-dead-letter-reason": "Invalid: no field 'order'"}
        await delivery.ack()
