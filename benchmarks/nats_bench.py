"""unimq vs plain nats-py JetStream on the same nats-server, in the same run, interleaved.

* produce: plain ``js.publish_async`` with pipelined acks (batches of 1000, acks awaited per batch)
  vs ``producer.send_many`` (which sends the same batches through the adapter). unimq puts each
  message's id in a header (the contract: ids survive redelivery, dead-lettering, migration), so a
  second plain baseline, "produce plain+id", publishes the same way with a ``Message-Id`` header:
  the first ratio is the cost of unimq and its header, the second the cost of unimq alone;
* consume: plain pull ``fetch(100)`` + ``msg.ack()`` per message vs a unimq consumer
  (``async for delivery in consumer: await delivery.ack()``, prefetch 100).

Each round runs both sides (alternating which goes first) on fresh streams; the report gives the
median of the rounds in messages/s and the ratio unimq/plain. ``--quick`` finishes well under two
minutes.

    .venv/bin/python benchmarks/nats_bench.py [--quick] [--url nats://127.0.0.1:4222]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from unimq_nats.mapping import stream_name

import unimq

BATCH = 1000
FETCH = 100


async def plain_produce(js: JetStreamContext, subject: str, payloads: list[bytes], with_id: bool = False) -> None:
    for i in range(0, len(payloads), BATCH):
        futures = [
            await js.publish_async(subject, body, headers={"Message-Id": uuid.uuid4().hex} if with_id else None)
            for body in payloads[i:i + BATCH]
        ]
        await asyncio.gather(*futures)


async def unimq_produce(broker: unimq.Broker, subject: str, payloads: list[bytes]) -> None:
    await broker.producer(subject).send_many(payloads)


async def plain_consume(js: JetStreamContext, subject: str, count: int) -> None:
    sub = await js.pull_subscribe(subject, durable="plain", stream=stream_name(subject))
    done = 0
    while done < count:
        for msg in await sub.fetch(min(FETCH, count - done), timeout=2):
            await msg.ack()
            done += 1
    await sub.unsubscribe()


async def unimq_consume(broker: unimq.Broker, subject: str, count: int) -> None:
    done = 0
    async with broker.consumer(subject, "unimq", prefetch=FETCH) as consumer:
        async for delivery in consumer:
            await delivery.ack()
            done += 1
            if done == count:
                return


async def timed(run: Callable[[], Awaitable[None]], count: int) -> float:
    started = time.perf_counter()
    await run()
    return count / (time.perf_counter() - started)


async def fresh_stream(js: JetStreamContext, subject: str) -> None:
    await js.add_stream(api.StreamConfig(name=stream_name(subject), subjects=[subject]))


async def main(url: str, messages: int, rounds: int, size: int) -> dict[str, dict[str, float]]:
    client: Client = await nats.connect(url)
    js = client.jetstream()
    broker = await unimq.connect(url)
    payloads = [os.urandom(size) for _ in range(messages)]
    prefix = f"bench.{uuid.uuid4().hex[:8]}"
    names = ("produce plain", "produce plain+id", "produce unimq", "consume plain", "consume unimq")
    rates: dict[str, list[float]] = {k: [] for k in names}
    try:
        for r in range(rounds):
            produce = {
                "produce plain": lambda s: plain_produce(js, s, payloads),
                "produce plain+id": lambda s: plain_produce(js, s, payloads, with_id=True),
                "produce unimq": lambda s: unimq_produce(broker, s, payloads),
            }
            order = list(produce) if r % 2 == 0 else list(reversed(produce))
            for name in order:
                subject = f"{prefix}.p{r}.{name.split()[1].replace('+', '_')}"
                await fresh_stream(js, subject)
                rates[name].append(await timed(lambda s=subject, n=name, p=produce: p[n](s), messages))
                await js.delete_stream(stream_name(subject))
            subject = f"{prefix}.c{r}"
            await fresh_stream(js, subject)
            await plain_produce(js, subject, payloads)
            consume = {
                "consume plain": lambda s=subject: plain_consume(js, s, messages),
                "consume unimq": lambda s=subject: unimq_consume(broker, s, messages),
            }
            order = list(consume) if r % 2 == 0 else list(reversed(consume))
            for name in order:
                rates[name].append(await timed(consume[name], messages))
            await js.delete_stream(stream_name(subject))
    finally:
        await broker.close()
        await client.close()
    report: dict[str, dict[str, float]] = {}
    for op, baseline in (("produce", "plain"), ("produce+id", "plain+id"), ("consume", "plain")):
        kind = op.split("+")[0]
        plain, ours = statistics.median(rates[f"{kind} {baseline}"]), statistics.median(rates[f"{kind} unimq"])
        report[op] = {"plain_msgs_per_s": round(plain), "unimq_msgs_per_s": round(ours),
                      "ratio": round(ours / plain, 3)}
    return report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("UNIMQ_TEST_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--quick", action="store_true", help="5 rounds of 5,000 messages")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--size", type=int, default=1024, help="body bytes (default 1 KiB)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    messages = args.messages or (5_000 if args.quick else 20_000)
    rounds = max(5, args.rounds or (5 if args.quick else 7))
    report = asyncio.run(main(args.url, messages, rounds, args.size))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"nats JetStream: {messages} × {args.size} B, median of {rounds} interleaved rounds")
    print(f"{'':10} {'plain nats-py':>15} {'unimq':>12} {'ratio':>7}")
    for op, row in report.items():
        print(f"{op:10} {row['plain_msgs_per_s']:>11,.0f}/s {row['unimq_msgs_per_s']:>10,.0f}/s {row['ratio']:>7.2f}")


if __name__ == "__main__":
    cli()
