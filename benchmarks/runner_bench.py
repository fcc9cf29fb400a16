"""The handler runner's per-message overhead: ``broker.consume`` vs a plain ``async for`` + ``ack()``.

Both consume the same pre-filled destination with the same prefetch, with a handler that does
nothing, so the difference is what the runner costs per message: its slot, task, lock-renewal
timer and settlement bookkeeping. Each case runs ``--rounds`` times on a fresh destination; the
median is reported. Takes well under a minute.

    .venv/bin/python benchmarks/runner_bench.py [--url memory:// --url redis://127.0.0.1:6379/0] [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import unimq

PREFETCH = 100
DEFAULT_URLS = ["memory://runner-bench", "redis://127.0.0.1:6379/0"]
COUNTS = {"memory": 20_000, "redis": 5_000}


async def plain(broker: unimq.Broker, dest: str, count: int) -> None:
    seen = 0
    async with broker.consumer(dest, prefetch=PREFETCH) as consumer:
        async for delivery in consumer:
            await delivery.ack()
            seen += 1
            if seen == count:
                return


def runner(concurrency: int) -> Callable[[unimq.Broker, str, int], Awaitable[None]]:
    async def consume(broker: unimq.Broker, dest: str, count: int) -> None:
        stop = asyncio.Event()
        seen = 0

        async def handler(delivery: unimq.Delivery) -> None:
            nonlocal seen
            seen += 1
            if seen == count:
                stop.set()

        await broker.consume(dest, handler, concurrency=concurrency, prefetch=PREFETCH, stop=stop,
                             handle_signals=False)

    return consume


async def measure(url: str, count: int, rounds: int) -> list[tuple[str, float]]:
    cases = {"async for + ack": plain, "consume, concurrency=1": runner(1), "consume, concurrency=8": runner(8)}
    out: list[tuple[str, float]] = []
    async with unimq.connect(url) as broker:
        for name, case in cases.items():
            runs = []
            for _ in range(rounds):
                dest = f"rb-{uuid.uuid4().hex[:8]}"
                await broker.ensure(dest)
                producer = broker.producer(dest)
                for offset in range(0, count, 1000):
                    await producer.send_many([b"x" * 64] * min(1000, count - offset))
                started = time.perf_counter()
                await asyncio.wait_for(case(broker, dest, count), 60)
                runs.append((time.perf_counter() - started) / count * 1e6)
                await broker.delete(dest)
            out.append((name, statistics.median(runs)))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", action="append", help="broker URL (repeatable); default memory:// and redis")
    parser.add_argument("--count", type=int, help="messages per run (default: 20,000 memory, 5,000 others)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for url in args.url or DEFAULT_URLS:
        scheme = url.split(":", 1)[0]
        count = args.count or COUNTS.get(scheme, 5_000)
        results = await measure(url, count, args.rounds)
        base = results[0][1]
        print(f"\n{scheme}: {count} messages × {args.rounds} rounds (median), prefetch {PREFETCH}")
        print(f"  {'case':<24} {'µs/msg':>8} {'msg/s':>9} {'overhead µs/msg':>16}")
        for name, micros in results:
            print(f"  {name:<24} {micros:8.1f} {1e6 / micros:9,.0f} {micros - base:16.1f}")


if __name__ == "__main__":
    asyncio.run(main())
