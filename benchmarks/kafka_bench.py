"""unimq vs plain aiokafka on the same Kafka broker: produce and consume throughput.

Same run, interleaved (the order alternates each round), median of the rounds, 1 KiB messages.
Both producers use the same settings as unimq's defaults: acks=all, enable_idempotence=True,
linger_ms=5, max_batch_size=64 KiB; both send a batch without awaiting each record, then await
it as a whole. Both consumers read the same topic (written by unimq, so records carry a
``message-id`` header), commit manually every 100 ms, and touch every record; unimq acks every
message individually (contiguous-offset commits). Consume throughput is measured from the first
record to the last, so group-join time does not count.

    .venv/bin/python benchmarks/kafka_bench.py            # 100k messages x 5 rounds
    .venv/bin/python benchmarks/kafka_bench.py --quick    # 20k x 5, under 2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

import unimq

BATCH = 10_000  # the adapter's batch_send limit: send_many sends chunks of this size


def bootstrap_of(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0].rsplit("@", 1)[-1]


async def raw_produce(bootstrap: str, topic: str, payload: bytes, count: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=65536)
    await producer.start()
    try:
        started = time.perf_counter()
        for first in range(0, count, BATCH):
            futures = [await producer.send(topic, payload) for _ in range(min(BATCH, count - first))]
            await asyncio.wait(futures)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def unimq_produce(broker: unimq.Broker, topic: str, payload: bytes, count: int) -> float:
    producer = broker.producer(topic)
    started = time.perf_counter()
    await producer.send_many(payload for _ in range(count))
    return count / (time.perf_counter() - started)


async def raw_consume(bootstrap: str, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        seen = 0
        nbytes = 0
        first = 0.0
        last_commit = time.perf_counter()
        while seen < count:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    nbytes += len(record.value)
                    seen += 1
            if seen and not first:
                first = time.perf_counter()
            if time.perf_counter() - last_commit >= 0.1:
                await consumer.commit()
                last_commit = time.perf_counter()
        elapsed = time.perf_counter() - first
        await consumer.commit()
        return count / elapsed
    finally:
        await consumer.stop()


async def unimq_consume(broker: unimq.Broker, topic: str, count: int, prefetch: int) -> float:
    async with broker.consumer(topic, f"unimq-{uuid.uuid4().hex[:8]}", prefetch=prefetch) as consumer:
        seen = 0
        nbytes = 0
        first = 0.0
        async for delivery in consumer:
            if not first:
                first = time.perf_counter()
            nbytes += len(delivery.message.body)
            await delivery.ack()
            seen += 1
            if seen >= count:
                break
        return count / (time.perf_counter() - first)


async def _await(coro: Awaitable[float]) -> float:
    return await coro


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="kafka://127.0.0.1:9092")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="20k messages per run")
    args = parser.parse_args()
    if args.quick:
        args.messages = 20_000
    bootstrap = bootstrap_of(args.url)
    payload = bytes(args.size)
    results: dict[str, list[float]] = {k: [] for k in ("raw produce", "unimq produce", "raw consume", "unimq consume")}
    async with unimq.connect(args.url) as broker:
        for round_no in range(args.rounds):
            raw_topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
            uni_topic = f"bench-unimq-{uuid.uuid4().hex[:8]}"
            for name in (raw_topic, uni_topic):
                await broker.ensure(name, partitions=1, dead_letter=False)
            produce: list[tuple[str, Awaitable[float]]] = [
                ("raw produce", raw_produce(bootstrap, raw_topic, payload, args.messages)),
                ("unimq produce", unimq_produce(broker, uni_topic, payload, args.messages)),
            ]
            consume: list[tuple[str, Callable[[], Awaitable[float]]]] = [
                ("raw consume", functools.partial(raw_consume, bootstrap, uni_topic, args.messages)),
                ("unimq consume", functools.partial(unimq_consume, broker, uni_topic, args.messages, args.prefetch)),
            ]
            if round_no % 2:
                produce.reverse()
                consume.reverse()
            for name, run in [(n, functools.partial(_await, c)) for n, c in produce] + consume:
                rate = await run()
                results[name].append(rate)
                print(f"round {round_no + 1}: {name:<14} {rate:>10,.0f} msg/s", flush=True)
            for name in (raw_topic, uni_topic):
                await broker.delete(name)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{args.messages} x {args.size} B messages, {args.rounds} rounds, median msg/s "
          f"(acks=all, idempotent, linger 5 ms; unimq prefetch {args.prefetch}):")
    for kind in ("produce", "consume"):
        raw, uni = med[f"raw {kind}"], med[f"unimq {kind}"]
        print(f"  {kind:<8} aiokafka {raw:>10,.0f}   unimq {uni:>10,.0f}   ratio {uni / raw:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
