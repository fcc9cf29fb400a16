"""Resident memory over 1,000,000 messages through unimq: flat, no growth.

A producer (``send_many`` of 1000) and a consumer (receive + ack) run concurrently on one
destination, the producer held at most ``--lag`` messages ahead so the backlog — which on
memory:// lives in this process — stays bounded. The process's RSS is sampled every 0.5 s with
the number of messages consumed so far. Verdict: the median RSS of the last fifth vs the second
fifth (after warm-up); growth under 5 % (or under 2 MiB) is flat. On Redis the stream is trimmed
behind the consumer (``XTRIM MINID``), so the shared broker does not hold a million entries.

    .venv/bin/python benchmarks/soak_bench.py [--url memory://soak] [--messages 1000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import psutil

import unimq

MiB = 1024 * 1024


async def soak(url: str, messages: int, size: int, lag: int) -> dict[str, Any]:
    proc = psutil.Process()
    body = b"x" * size
    dest = f"bench-soak-{uuid.uuid4().hex[:8]}"
    samples: list[tuple[float, int, float]] = []
    consumed = 0
    started = time.perf_counter()
    async with unimq.connect(url) as broker:
        # The default group only: a named group beside it would leave every message waiting in the default one.
        group = None
        await broker.ensure(dest)
        trim = broker.native if broker.backend == "redis" else None
        progressed = asyncio.Event()

        async def produce() -> None:
            producer = broker.producer(dest)
            for sent in range(0, messages, 1000):
                while sent - consumed > lag:
                    progressed.clear()
                    await progressed.wait()
                await producer.send_many([body] * min(1000, messages - sent))

        async def consume() -> None:
            nonlocal consumed
            async with broker.consumer(dest, group, prefetch=1000) as consumer:
                while consumed < messages:
                    batch = await consumer.receive_many(500, timeout=5.0)
                    if not batch:
                        raise TimeoutError(f"consumer starved at {consumed}")
                    await consumer.ack_many(batch)
                    consumed += len(batch)
                    progressed.set()
                    if trim is not None and consumed % 50_000 < len(batch):
                        await trim.xtrim(dest, minid=batch[-1].native[0])  # (entry id, fields)

        async def sample() -> None:
            while True:
                samples.append((round(time.perf_counter() - started, 2), consumed, proc.memory_info().rss / MiB))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        try:
            await asyncio.gather(produce(), consume())
        finally:
            sampler.cancel()
            samples.append((round(time.perf_counter() - started, 2), consumed, proc.memory_info().rss / MiB))
            await broker.delete(dest)
    elapsed = time.perf_counter() - started
    fifth = max(1, len(samples) // 5)
    early = statistics.median(s[2] for s in samples[fifth:2 * fifth])
    late = statistics.median(s[2] for s in samples[-fifth:])
    growth = late - early
    return {
        "url": url.split("?", 1)[0], "messages": messages, "size": size, "lag": lag,
        "seconds": round(elapsed, 1), "rate": round(messages / elapsed),
        "rss_early_mib": round(early, 1), "rss_late_mib": round(late, 1), "growth_mib": round(growth, 1),
        "peak_mib": round(max(s[2] for s in samples), 1),
        "flat": growth < max(2.0, 0.05 * early),
        "samples": [{"t": t, "consumed": c, "rss_mib": round(r, 1)} for t, c, r in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="memory://soak?lock_timeout=60")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--lag", type=int, default=20_000)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    result = asyncio.run(soak(args.url, args.messages, args.size, args.lag))
    print({k: v for k, v in result.items() if k != "samples"})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
