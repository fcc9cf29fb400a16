"""unimq vs plain redis-py on the same Redis, in the same run, interleaved.

* produce: plain pipelined XADD (batches of 1000, up to 8 pipelines in flight, as the core sends)
  vs ``producer.send_many``;
* consume: plain XREADGROUP COUNT 100 + one XACK per batch vs a unimq consumer receiving batches
  of 100 and acking each delivery (the adapter coalesces concurrent acks into one XACK).

Each round runs both sides (alternating which goes first); the report gives the median of the
rounds in messages/s and the ratio unimq/plain, plus the client CPU per message (process time),
which is steadier than wall time on a shared machine. ``--quick`` finishes well under two minutes.

    .venv/bin/python benchmarks/redis_bench.py [--quick] [--url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

import unimq

BATCH = 1000
DEPTH = 8
READ_COUNT = 100


async def plain_produce(client: Redis, stream: str, payloads: list[bytes]) -> None:
    gate = asyncio.Semaphore(DEPTH)

    async def batch(chunk: list[bytes]) -> None:
        async with gate, client.pipeline(transaction=False) as pipe:
            for body in chunk:
                pipe.xadd(stream, {"body": body})
            await pipe.execute()

    await asyncio.gather(*(batch(payloads[i:i + BATCH]) for i in range(0, len(payloads), BATCH)))


async def unimq_produce(broker: unimq.Broker, stream: str, payloads: list[bytes]) -> None:
    await broker.producer(stream).send_many(payloads)


async def plain_consume(client: Redis, stream: str, group: str, count: int) -> None:
    await client.xgroup_create(stream, group, "0")
    done = 0
    while done < count:
        reply: Any = await client.xreadgroup(group, "bench", {stream: ">"}, count=READ_COUNT, block=1000)
        if not reply:
            raise RuntimeError("plain consumer starved")
        ids = [entry_id for entry_id, _ in reply[0][1]]
        await client.xack(stream, group, *ids)
        done += len(ids)


async def unimq_consume(broker: unimq.Broker, stream: str, group: str, count: int) -> None:
    done = 0
    async with broker.consumer(stream, group, prefetch=READ_COUNT, start="earliest") as consumer:
        while done < count:
            batch = await consumer.receive_many(min(READ_COUNT, count - done), timeout=1.0)
            if not batch:
                raise RuntimeError("unimq consumer starved")
            await asyncio.gather(*(d.ack() for d in batch))
            done += len(batch)


async def timed(run: Callable[[], Awaitable[None]], count: int) -> tuple[float, float]:
    """(messages per second, client CPU microseconds per message)."""
    started, cpu = time.perf_counter(), time.process_time()
    await run()
    return count / (time.perf_counter() - started), (time.process_time() - cpu) * 1e6 / count


async def main(url: str, messages: int, rounds: int, size: int) -> dict[str, dict[str, float]]:
    client = Redis.from_url(url)
    broker = await unimq.connect(url)
    payloads = [os.urandom(size) for _ in range(messages)]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    names = ("produce plain", "produce unimq", "consume plain", "consume unimq")
    rates: dict[str, list[float]] = {k: [] for k in names}
    cpus: dict[str, list[float]] = {k: [] for k in names}
    try:
        for r in range(rounds):
            produce = {
                "produce plain": functools.partial(plain_produce, client, f"{prefix}-p{r}-plain", payloads),
                "produce unimq": functools.partial(unimq_produce, broker, f"{prefix}-p{r}-unimq", payloads),
            }
            order = list(produce) if r % 2 == 0 else list(reversed(produce))
            for name in order:
                rate, cpu = await timed(produce[name], messages)
                rates[name].append(rate)
                cpus[name].append(cpu)
            await client.delete(f"{prefix}-p{r}-plain", f"{prefix}-p{r}-unimq")
            stream = f"{prefix}-c{r}"
            await plain_produce(client, stream, payloads)
            consume = {
                "consume plain": functools.partial(plain_consume, client, stream, "plain", messages),
                "consume unimq": functools.partial(unimq_consume, broker, stream, "unimq", messages),
            }
            order = list(consume) if r % 2 == 0 else list(reversed(consume))
            for name in order:
                rate, cpu = await timed(consume[name], messages)
                rates[name].append(rate)
                cpus[name].append(cpu)
            await client.delete(stream)
    finally:
        await broker.close()
        await client.aclose()
    report: dict[str, dict[str, float]] = {}
    for op in ("produce", "consume"):
        plain, ours = statistics.median(rates[f"{op} plain"]), statistics.median(rates[f"{op} unimq"])
        plain_cpu, our_cpu = statistics.median(cpus[f"{op} plain"]), statistics.median(cpus[f"{op} unimq"])
        report[op] = {
            "plain_msgs_per_s": round(plain), "unimq_msgs_per_s": round(ours), "ratio": round(ours / plain, 3),
            "plain_cpu_us_per_msg": round(plain_cpu, 1), "unimq_cpu_us_per_msg": round(our_cpu, 1),
            "cpu_ratio": round(plain_cpu / our_cpu, 3),
        }
    return report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("UNIMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--quick", action="store_true", help="7 rounds of 5,000 messages")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--size", type=int, default=1024, help="body bytes (default 1 KiB)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    messages = args.messages or (5_000 if args.quick else 20_000)
    rounds = max(5, args.rounds or 7)
    report = asyncio.run(main(args.url, messages, rounds, args.size))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"redis: {messages} × {args.size} B, median of {rounds} interleaved rounds")
    print(f"{'':8} {'plain redis-py':>15} {'unimq':>12} {'ratio':>7}   "
          f"{'CPU µs/msg plain':>16} {'unimq':>6} {'ratio':>6}")
    for op, row in report.items():
        print(f"{op:8} {row['plain_msgs_per_s']:>13,.0f}/s {row['unimq_msgs_per_s']:>10,.0f}/s {row['ratio']:>7.2f}"
              f"   {row['plain_cpu_us_per_msg']:>16.1f} {row['unimq_cpu_us_per_msg']:>6.1f} {row['cpu_ratio']:>6.2f}")


if __name__ == "__main__":
    cli()
