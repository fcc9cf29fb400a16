"""Consumer open and close latency per backend (issue 32): how long ``open()`` and ``close()`` take.

Open is measured to the first message received (a consumer is only useful once its group is joined
and it is fetching), with the message sent before the consumer opens; close is measured with
messages held unsettled (the case where a close must hand them back). Median and worst of N rounds.

    .venv/bin/python benchmarks/lifecycle_bench.py [--rounds 10] [--target NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import unimq
from unimq.testing.brokers import TARGETS, Provisioner, Target


async def measure(target: Target, url: str, rounds: int) -> dict[str, float]:
    opens: list[float] = []
    closes: list[float] = []
    async with unimq.connect(url) as broker:
        if not broker.capabilities.persistence:
            return {}  # nothing waits for a consumer that is not open yet (nats-core)
        dest = f"bench-life-{uuid.uuid4().hex[:8]}"
        group = f"g-{uuid.uuid4().hex[:6]}" if broker.capabilities_for(dest).fanout else None
        await broker.ensure(dest, groups=(group,) if group else ())
        producer = broker.producer(dest)
        try:
            for _ in range(rounds):
                await producer.send_many([b"a", b"b", b"c"])
                started = time.perf_counter()
                consumer = await broker.consumer(dest, group, prefetch=3).open()
                first = await consumer.receive(timeout=target.timing.receive)
                opens.append(time.perf_counter() - started)
                assert first is not None, f"{target.name}: nothing received"
                await first.ack()
                await consumer.receive_many(2, 1.0)  # held, not settled
                started = time.perf_counter()
                await consumer.close()
                closes.append(time.perf_counter() - started)
                async with broker.consumer(dest, group) as drain:  # take back what the close released
                    while batch := await drain.receive_batch(10, timeout=0.5):
                        await drain.ack_many(batch)
        finally:
            await broker.delete(dest)
    return {"open_median_ms": 1000 * statistics.median(opens), "open_max_ms": 1000 * max(opens),
            "close_median_ms": 1000 * statistics.median(closes), "close_max_ms": 1000 * max(closes)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--target", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    provisioner = Provisioner()
    rows = {}
    for target in TARGETS:
        if args.target and target.name not in args.target:
            continue
        resolution = provisioner.resolve(target)
        if resolution.url is None or target.pool:
            continue
        rows[target.name] = await measure(target, resolution.url, args.rounds)
        if rows[target.name] and not args.json:
            r = rows[target.name]
            print(f"{target.name:<20} open {r['open_median_ms']:8.1f} ms (max {r['open_max_ms']:8.1f})   "
                  f"close {r['close_median_ms']:8.1f} ms (max {r['close_max_ms']:8.1f})", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
