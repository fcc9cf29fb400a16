"""Native temporary destinations on RabbitMQ: ``ensure(temporary=True)`` makes classic queues with
``x-expires`` and an auto-delete exchange, so RabbitMQ itself removes a destination once nothing uses
it — also when the process that made it died without deleting it."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import aiormq.exceptions as amqp_errors
import pytest
from rabbitmq_support import QUORUM_URL, RAW_URL, with_query

import unimq

pytestmark = pytest.mark.needs_broker("rabbitmq")

IDLE = 0.5


async def exists(kind: str, name: str) -> bool:
    """A passive declare on a fresh connection (404 closes the channel, so one channel per probe)."""
    connection = await aio_pika.connect(RAW_URL)
    async with connection:
        channel = await connection.channel()
        underlay = await channel.get_underlay_channel()
        try:
            if kind == "queue":
                await underlay.queue_declare(name, passive=True)
            else:
                await underlay.exchange_declare(name, passive=True)
        except amqp_errors.ChannelNotFoundEntity:
            return False
        return True


async def gone(kind: str, name: str, within: float) -> bool:
    """Probed every 2.5 × IDLE: a passive declare is a use of the queue, which renews its x-expires lease."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        await asyncio.sleep(IDLE * 2.5)
        if not await exists(kind, name):
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False


@pytest.mark.parametrize("url", [RAW_URL, QUORUM_URL], ids=["classic", "quorum"])
async def test_an_abandoned_temporary_destination_is_removed_by_rabbitmq(url: str) -> None:
    dest = f"rmq-tmp-{uuid.uuid4().hex[:10]}"
    broker = await unimq.connect(with_query(url, f"temporary_idle={IDLE}"))
    try:
        assert broker.capabilities.temporary.is_native
        await broker.ensure(dest, temporary=True)
        await broker.producer(dest).send(b"scratch")
        async with broker.consumer(dest) as consumer:
            got = await consumer.receive(timeout=5)
            assert got is not None and got.message.body == b"scratch"
            await got.ack()
            await asyncio.sleep(IDLE * 2)  # a queue with a consumer is in use: it stays
            assert await exists("queue", dest), "a temporary queue in use was removed"
    finally:
        await broker.close()  # as a crash would leave it: never deleted by unimq
    assert await gone("queue", dest, IDLE * 8), "the unused temporary queue is still there"
    assert await gone("queue", f"{dest}.dlq", IDLE * 8), "its dead-letter queue is still there"
    assert await gone("exchange", dest, IDLE * 8), "its exchange is still there"


async def test_request_reply_queue_is_temporary() -> None:
    """The reply queue of request() is declared temporary (x-expires): RabbitMQ removes it even when
    the requester dies without deleting it. Re-declaring it with exactly those arguments succeeds
    only if it has them (RabbitMQ refuses an inequivalent declare)."""
    dest = f"rmq-req-{uuid.uuid4().hex[:10]}"
    url = with_query(RAW_URL, f"temporary_idle={IDLE}")
    async with unimq.connect(url) as responder, unimq.connect(url) as requester:
        await responder.ensure(dest)
        try:
            async with responder.consumer(dest) as requests:

                async def answer() -> str:
                    delivery = await requests.receive(timeout=5)
                    assert delivery is not None
                    await delivery.reply(b"pong")
                    await delivery.ack()
                    return delivery.message.reply_to or ""

                task = asyncio.create_task(answer())
                assert (await requester.request(dest, b"ping", timeout=5)).body == b"pong"
                reply_queue = await task
            connection = await aio_pika.connect(RAW_URL)
            async with connection:
                channel = await connection.channel()
                underlay = await channel.get_underlay_channel()
                await underlay.queue_declare(reply_queue, durable=True, arguments={"x-expires": int(IDLE * 1000)})
        finally:
            await responder.delete(dest)
