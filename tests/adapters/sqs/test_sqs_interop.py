"""Interop with plain boto3, both directions: no envelope, headers ↔ MessageAttributes."""

from __future__ import annotations

import json
from typing import Any

import unimq


async def test_boto3_to_unimq(broker: unimq.Broker, boto: Any, name: str) -> None:
    await broker.ensure(name)
    url = boto.get_queue_url(QueueName=name)["QueueUrl"]
    sent = boto.send_message(
        QueueUrl=url, MessageBody='{"order": 42}',
        MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"},
                           "count": {"DataType": "Number", "StringValue": "7"},
                           "blob": {"DataType": "Binary", "BinaryValue": b"\x01\x02"}},
    )
    async with broker.consumer(name) as consumer:
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None
        message = delivery.message
        assert message.body == b'{"order": 42}'
        assert message.headers == {"tenant": "acme", "count": "7", "blob": "AQI="}
        assert message.message_id == sent["MessageId"]
        assert message.key is None and message.correlation_id is None
        assert message.timestamp is not None
        assert delivery.attempt == 1
        assert delivery.native["MessageId"] == sent["MessageId"]
        await delivery.ack()
    assert boto.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []


async def test_unimq_to_boto3(broker: unimq.Broker, boto: Any, name: str) -> None:
    await broker.ensure(name)
    sent = await broker.producer(name).send(
        b"plain text body", key="customer-1", headers={"tenant": "acme"}, correlation_id="c-1",
        reply_to="replies", content_type="text/plain",
    )
    url = boto.get_queue_url(QueueName=name)["QueueUrl"]
    got = boto.receive_message(QueueUrl=url, WaitTimeSeconds=2, MessageAttributeNames=["All"])["Messages"]
    assert len(got) == 1
    raw = got[0]
    assert raw["Body"] == "plain text body"
    attrs = raw["MessageAttributes"]
    assert attrs["tenant"] == {"DataType": "String", "StringValue": "acme"}
    meta = json.loads(attrs["unimq"]["StringValue"])
    assert meta == {"message_id": sent.message_id, "key": "customer-1", "correlation_id": "c-1",
                    "reply_to": "replies", "content_type": "text/plain"}
    assert set(attrs) == {"tenant", "unimq"}
    boto.delete_message(QueueUrl=url, ReceiptHandle=raw["ReceiptHandle"])


async def test_binary_body_round_trips(broker: unimq.Broker, boto: Any, name: str) -> None:
    await broker.ensure(name)
    body = bytes(range(256))
    await broker.producer(name).send(body)
    async with broker.consumer(name) as consumer:
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None and delivery.message.body == body
        assert delivery.native["Body"] != body.decode("latin-1")  # base64 on the wire, marked in 'unimq'
        await delivery.ack()


async def test_fifo_interop_group_is_key(fifo_broker: unimq.Broker, boto: Any, name: str) -> None:
    await fifo_broker.ensure(name)
    url = boto.get_queue_url(QueueName=name + ".fifo")["QueueUrl"]
    boto.send_message(QueueUrl=url, MessageBody="from boto3", MessageGroupId="g-7", MessageDeduplicationId="d-1")
    sent = await fifo_broker.producer(name).send(b"from unimq", key="g-8")
    async with fifo_broker.consumer(name) as consumer:
        first = await consumer.receive(timeout=5)
        assert first is not None
        assert (first.message.body, first.message.key, first.message.message_id) == (b"from boto3", "g-7", "d-1")
        await first.ack()
    got = boto.receive_message(QueueUrl=url, WaitTimeSeconds=2, MessageSystemAttributeNames=["All"],
                               MessageAttributeNames=["All"])["Messages"]
    assert got[0]["Body"] == "from unimq"
    assert got[0]["Attributes"]["MessageGroupId"] == "g-8"
    assert got[0]["Attributes"]["MessageDeduplicationId"] == sent.message_id
    assert "MessageAttributes" not in got[0]  # nothing to carry: id and key are native on FIFO
