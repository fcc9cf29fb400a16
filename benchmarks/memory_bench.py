"""memory:// throughput: send_many and consume-with-ack, 1 KiB messages, one process.

    .venv/bin/python benchmarks/memory_bench.py [--messages 200000] [--repeat 5] [--json out.json]

Prints the median of ``--repeat`` runs. The bar (issue #2): send_many ≥ 100,000 msg/s,
consume-with-ack ≥ 50,000 msg/s on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import unimq


async def one_run(messages: int, size: int, batch: int) -> tuple[float, float]:
    body = b"x" * size
    async with unimq.connect(f"memory://bench-{uuid.uuid4().hex[:6]}?lock_timeout=60") as broker:
        producer = broker.producer("bench")
        started = time.perf_counter()
        for offset in range(0, messages, batch):
            await producer.send_many([body] * min(batch, messages - offset))
        produce = messages / (time.perf_counter() - started)

        received = 0
        started = time.perf_counter()
        async with broker.consumer("bench", prefetch=1000) as consumer:
            async for delivery in consumer:
                await delivery.ack()
                received += 1
                if received == messages:
                    break
        consume = messages / (time.perf_counter() - started)
    return produce, consume


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    runs = [await one_run(args.messages, args.size, args.batch) for _ in range(args.repeat)]
    produce = statistics.median(r[0] for r in runs)
    consume = statistics.median(r[1] for r in runs)
    print(f"memory:// {args.messages} x {args.size} B, median of {args.repeat}: "
          f"send_many {produce:,.0f} msg/s, consume+ack {consume:,.0f} msg/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": "memory", "messages": args.messages, "size": args.size,
                       "send_many_msg_s": produce, "consume_ack_msg_s": consume,
                       "runs": [{"send_many": p, "consume_ack": c} for p, c in runs]}, f, indent=2)


if __name__ == "__main__":
    asyncio.run(main())
