"""Smoke-check the brokers started by scripts/brokers with real protocol clients.

    .venv/bin/python scripts/brokers-smoke.py [backend ...]

For each backend (default: the five real brokers) publish one message and consume it back:
RabbitMQ via aio-pika, Redis XADD/XREADGROUP, NATS JetStream pull consumer, Kafka via aiokafka
with a consumer group, ElasticMQ via boto3 (a standard and a FIFO queue with content-based
deduplication); on request also `servicebus` via azure-servicebus (send, peek-lock receive,
complete on queue unimq-q1). URLs come from UNIMQ_TEST_<BACKEND>_URL (Service Bus:
UNIMQ_TEST_SERVICEBUS_CONNECTION_STRING) or the scripts/brokers defaults.
Prints one line per backend and exits non-zero if any check failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from urllib.parse import parse_qs, urlsplit

TIMEOUT = 60.0
RUN = uuid.uuid4().hex[:8]
PAYLOAD = f"hello-{RUN}".encode()

DEFAULT_URLS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "kafka": "kafka://127.0.0.1:9092",
    "sqs": "sqs://?endpoint_url=http://127.0.0.1:9324&region=elasticmq",
}
SERVICEBUS_CONNECTION_STRING = os.environ.get(
    "UNIMQ_TEST_SERVICEBUS_CONNECTION_STRING",
    "Endpoint=sb://127.0.0.1:5673;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true",
)
SERVICEBUS_QUEUE = "unimq-q1"  # predeclared in scripts/servicebus-emulator-config.json


def url(backend: str) -> str:
    if backend == "servicebus":
        return SERVICEBUS_CONNECTION_STRING
    return os.environ.get(f"UNIMQ_TEST_{backend.upper()}_URL", DEFAULT_URLS[backend])


def expect(got: bytes, what: str) -> None:
    if got != PAYLOAD:
        raise AssertionError(f"{what}: expected {PAYLOAD!r}, got {got!r}")


async def check_rabbitmq() -> None:
    import aio_pika

    conn = await aio_pika.connect_robust(url("rabbitmq"))
    async with conn:
        channel = await conn.channel()
        queue = await channel.declare_queue(f"smoke-{RUN}", auto_delete=True)
        await channel.default_exchange.publish(aio_pika.Message(PAYLOAD), routing_key=queue.name)
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    expect(message.body, "rabbitmq")
                break


async def check_redis() -> None:
    import redis.asyncio as redis

    client = redis.from_url(url("redis"))
    stream = f"smoke-{RUN}"
    try:
        await client.xgroup_create(stream, "g", id="0", mkstream=True)
        await client.xadd(stream, {"body": PAYLOAD})
        reply = await client.xreadgroup("g", "c1", {stream: ">"}, count=1, block=5000)
        msg_id, fields = reply[0][1][0]
        expect(fields[b"body"], "redis")
        await client.xack(stream, "g", msg_id)
    finally:
        await client.delete(stream)
        await client.aclose()


async def check_nats() -> None:
    import nats

    nc = await nats.connect(url("nats"))
    try:
        js = nc.jetstream()
        stream = f"SMOKE_{RUN}"
        await js.add_stream(name=stream, subjects=[f"smoke.{RUN}"])
        try:
            ack = await js.publish(f"smoke.{RUN}", PAYLOAD)
            assert ack.seq == 1, ack
            sub = await js.pull_subscribe(f"smoke.{RUN}", durable="d")
            msgs = await sub.fetch(1, timeout=5)
            expect(msgs[0].data, "nats")
            await msgs[0].ack()
        finally:
            await js.delete_stream(stream)
    finally:
        await nc.close()


async def check_kafka() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    bootstrap = urlsplit(url("kafka")).netloc
    topic = f"smoke-{RUN}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, PAYLOAD)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"smoke-{RUN}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        expect(msg.value, "kafka")
        await consumer.commit()
    finally:
        await consumer.stop()


def check_sqs_sync() -> None:
    import boto3

    query = parse_qs(urlsplit(url("sqs")).query)
    sqs = boto3.client("sqs", endpoint_url=query["endpoint_url"][0], region_name=query["region"][0],
                       aws_access_key_id="x", aws_secret_access_key="x")
    standard = sqs.create_queue(QueueName=f"smoke-{RUN}")["QueueUrl"]
    fifo = sqs.create_queue(QueueName=f"smoke-{RUN}.fifo",
                            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
    try:
        sqs.send_message(QueueUrl=standard, MessageBody=PAYLOAD.decode())
        got = sqs.receive_message(QueueUrl=standard, WaitTimeSeconds=5)["Messages"][0]
        expect(got["Body"].encode(), "sqs standard")
        sqs.delete_message(QueueUrl=standard, ReceiptHandle=got["ReceiptHandle"])

        for _ in range(2):  # the second send is a duplicate and must be dropped
            sqs.send_message(QueueUrl=fifo, MessageBody=PAYLOAD.decode(), MessageGroupId="g")
        got = sqs.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10, WaitTimeSeconds=5)["Messages"]
        assert len(got) == 1, f"sqs fifo: content-based dedup let {len(got)} copies through"
        expect(got[0]["Body"].encode(), "sqs fifo")
        sqs.delete_message(QueueUrl=fifo, ReceiptHandle=got[0]["ReceiptHandle"])
    finally:
        sqs.delete_queue(QueueUrl=standard)
        sqs.delete_queue(QueueUrl=fifo)


async def check_sqs() -> None:
    await asyncio.to_thread(check_sqs_sync)


async def check_servicebus() -> None:
    from azure.servicebus import ServiceBusMessage
    from azure.servicebus.aio import ServiceBusClient

    async with ServiceBusClient.from_connection_string(SERVICEBUS_CONNECTION_STRING) as client:
        async with client.get_queue_sender(SERVICEBUS_QUEUE) as sender:
            await sender.send_messages(ServiceBusMessage(PAYLOAD))
        async with client.get_queue_receiver(SERVICEBUS_QUEUE, max_wait_time=5) as receiver:
            msgs = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert msgs, "servicebus: nothing received"
            expect(b"".join(msgs[0].body), "servicebus")
            await receiver.complete_message(msgs[0])


CHECKS = {"rabbitmq": check_rabbitmq, "redis": check_redis, "nats": check_nats,
          "kafka": check_kafka, "sqs": check_sqs, "servicebus": check_servicebus}
DEFAULT_CHECKS = ["rabbitmq", "redis", "nats", "kafka", "sqs"]


async def main(backends: list[str]) -> int:
    failed = 0
    for backend in backends:
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(CHECKS[backend](), timeout=TIMEOUT)
            print(f"{backend:<10}  ok    {url(backend)}  ({time.monotonic() - t0:.1f}s)", flush=True)
        except Exception as exc:  # report every backend, not just the first failure
            failed += 1
            print(f"{backend:<10}  FAIL  {url(backend)}  {type(exc).__name__}: {exc}", flush=True)
    print(f"{len(backends) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # it logs expected retries on a fresh broker as errors
    names = sys.argv[1:] or DEFAULT_CHECKS
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        sys.exit(f"unknown backend(s): {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    sys.exit(asyncio.run(main(names)))
