"""RabbitMQ: plain aio-pika vs unimq vs FastStream and Kombu, on the shared harness.

Raw side (what an aio-pika application at its best writes): its own durable queue, published to
through the default exchange, persistent messages, publisher confirms, mandatory, pipelined with
up to 8 x 1000 unconfirmed (the same window as unimq's ``send_many``: batches of 1000, 8 in
flight); consumed with prefetch 500, acking each message. unimq uses its default topology (an
exchange per destination), so the ratio includes what the mapping costs.

``unimq-loop`` is the idiomatic per-message path as its own row: ``async for delivery in consumer:
await delivery.ack()`` (batching on or off alike), against the raw client reading in batches. Run it
alone with ``--ops consume --batch on --concurrency 1 --contenders raw,unimq,unimq-loop``.

    .venv/bin/python benchmarks/rabbitmq_bench.py [--quick] [--url amqp://...] [harness options]
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib.metadata import version

import aio_pika
import peers
from harness import Backend, Contender, Quota, UnimqContender, UnimqLoop, Workload, main, peer

WINDOW = 1000
#: unimq's send_many keeps up to 8 batches of 1000 in flight (unimq.broker.PIPELINE_DEPTH); so does the plain side.
DEPTH = 8
PREFETCH = 500


class AioPika(Contender):
    name = "raw"

    def __init__(self, url: str) -> None:
        self.url = url.split("?", 1)[0]

    def client(self) -> str:
        return f"aio-pika {version('aio-pika')}"

    async def open(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        await self.channel.set_qos(prefetch_count=PREFETCH)

    async def close(self) -> None:
        await self.connection.close()

    async def create(self, dest: str, w: Workload) -> None:
        await self.channel.declare_queue(dest, durable=True)

    async def delete(self, dest: str) -> None:
        await self.channel.queue_delete(dest)

    async def _publish(self, dest: str, body: bytes) -> None:
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=dest, mandatory=True)

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        if not batch:
            for body in payloads:
                await self._publish(dest, body)
            return
        gate = asyncio.Semaphore(WINDOW * DEPTH)

        async def one(body: bytes) -> None:
            async with gate:
                await self._publish(dest, body)

        await asyncio.gather(*(one(body) for body in payloads))

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        # A channel per consumer, as aio-pika recommends: cancelling one consumer cannot break the others'.
        channel = await self.connection.channel()
        try:
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(dest, passive=True)
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    quota.take()
                    if quota.finished:
                        return
        finally:
            await asyncio.shield(channel.close())

    async def send_one(self, dest: str, body: bytes) -> None:
        await self._publish(dest, body)

    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        queue = await self.channel.declare_queue(dest, passive=True)
        async with queue.iterator() as messages:
            async for message in messages:
                on_body(message.body)
                await message.ack()




def contenders(url: str) -> list[Contender]:
    return [
        AioPika(url),
        UnimqContender(url, prefetch=PREFETCH),
        UnimqLoop(url, prefetch=PREFETCH, fill_by="unimq"),
        *peer(lambda: peers.FastStreamRabbit(url, prefetch=PREFETCH, window=WINDOW * DEPTH)),
        *peer(lambda: peers.Kombu(url, prefetch=PREFETCH, transport_options={"confirm_publish": True})),
    ]


BACKEND = Backend(
    name="rabbitmq",
    default_url="amqp://guest:guest@127.0.0.1:5672/",
    contenders=contenders,
    quick_count=1_500,
    full_count=20_000,
    notes=["persistent messages, publisher confirms, mandatory; raw and unimq pipeline 8 x 1000 unconfirmed",
           "consumers: prefetch 500, one ack per message (batching on and off consume alike)",
           "unimq-loop: async for + ack() per message, prefetch 500 (the idiomatic path)",
           "Kombu (py-amqp) waits for each confirm: it has no pipelined publish"],
)

if __name__ == "__main__":
    main(BACKEND)
