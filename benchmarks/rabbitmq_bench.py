"""unimq vs plain aio-pika on RabbitMQ: produce and consume throughput, same run, same durability.

Both sides send 1 KiB persistent messages with publisher confirms, mandatory, pipelined with at
most 8 x 1000 unconfirmed (unimq's ``send_many``: batches of 1000, 8 in flight), and consume
with the same prefetch, acking each message.
Repetitions interleave the two sides (alternating which goes first) and the median is reported.

The plain side is what an aio-pika application would write: its own durable queue, published to
through the default exchange. The unimq side uses its default topology (topic exchange per
destination, classic queue with x-max-priority) — so the ratio includes what the mapping costs.

    .venv/bin/python benchmarks/rabbitmq_bench.py [--quick] [--url amqp://...] [--messages N] [--reps R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika

import unimq

BODY = os.urandom(1024)
WINDOW = 1000
#: unimq's send_many keeps up to 8 batches of 1000 in flight (unimq.broker.PIPELINE_DEPTH); so does the plain side.
DEPTH = 8


async def raw_produce(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> float:
    exchange = channel.default_exchange
    gate = asyncio.Semaphore(WINDOW * DEPTH)

    async def one() -> None:
        async with gate:
            await exchange.publish(aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                   routing_key=queue, mandatory=True)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - started


async def raw_consume(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> float:
    declared = await channel.declare_queue(queue, passive=True)
    received = 0
    started = time.perf_counter()
    async with declared.iterator() as messages:
        async for message in messages:
            await message.ack()
            received += 1
            if received == count:
                break
    return time.perf_counter() - started


async def unimq_produce(broker: unimq.Broker, dest: str, count: int) -> float:
    producer = broker.producer(dest)
    started = time.perf_counter()
    await producer.send_many(BODY for _ in range(count))
    return time.perf_counter() - started


async def unimq_consume(broker: unimq.Broker, dest: str, count: int, prefetch: int) -> float:
    received = 0
    started = time.perf_counter()
    async with broker.consumer(dest, prefetch=prefetch) as consumer:
        async for delivery in consumer:
            await delivery.ack()
            received += 1
            if received == count:
                break
    return time.perf_counter() - started


async def main(url: str, count: int, reps: int, prefetch: int) -> None:
    raw_url = url.split("?", 1)[0]
    dest = f"bench-{uuid.uuid4().hex[:8]}"
    raw_queue = f"{dest}-raw"
    connection = await aio_pika.connect_robust(raw_url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.set_qos(prefetch_count=prefetch)
    await channel.declare_queue(raw_queue, durable=True)
    broker = await unimq.connect(url)
    await broker.ensure(dest)
    sides: dict[str, tuple[Callable[[], Awaitable[float]], Callable[[], Awaitable[float]]]] = {
        "aio-pika": (lambda: raw_produce(channel, raw_queue, count), lambda: raw_consume(channel, raw_queue, count)),
        "unimq": (lambda: unimq_produce(broker, dest, count), lambda: unimq_consume(broker, dest, count, prefetch)),
    }
    rates: dict[tuple[str, str], list[float]] = {(s, op): [] for s in sides for op in ("produce", "consume")}
    try:
        for rep in range(reps):
            order = list(sides) if rep % 2 == 0 else list(reversed(sides))
            for side in order:
                produce, consume = sides[side]
                rates[(side, "produce")].append(count / await produce())
                rates[(side, "consume")].append(count / await consume())
            print(f"rep {rep + 1}/{reps}: " + ", ".join(
                f"{s} {op} {v[-1]:,.0f}/s" for (s, op), v in rates.items()), flush=True)
    finally:
        await broker.delete(dest)
        await broker.close()
        await channel.queue_delete(raw_queue)
        await connection.close()
    print(f"\n{count} x 1 KiB persistent messages, publisher confirms, {WINDOW * DEPTH} in flight, "
          f"prefetch {prefetch}, median of {reps}")
    print(f"{'':8} {'aio-pika msg/s':>15} {'unimq msg/s':>12} {'ratio':>6}")
    for op in ("produce", "consume"):
        raw = statistics.median(rates[("aio-pika", op)])
        ours = statistics.median(rates[("unimq", op)])
        print(f"{op:8} {raw:15,.0f} {ours:12,.0f} {ours / raw:6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("UNIMQ_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--quick", action="store_true", help="5000 messages x 5 repetitions (well under 2 minutes)")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--prefetch", type=int, default=500)
    args = parser.parse_args()
    messages = args.messages or (5000 if args.quick else 20000)
    reps = args.reps or (5 if args.quick else 7)
    asyncio.run(main(args.url, messages, max(reps, 5), args.prefetch))
