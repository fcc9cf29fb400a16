"""memory:// throughput through unimq (no raw client exists: the broker *is* unimq), on the shared harness.

``send_many`` in batches of 1000 and consume-with-ack (prefetch 1000), one process, the consumer's
group attached. The bar (issue #27): send_many ≥ 250,000 msg/s, consume-with-ack ≥ 150,000 msg/s on
the project's 2-core machine; on a loaded machine read the CPU µs per message (4.0 and 6.7 µs).

    .venv/bin/python benchmarks/memory_bench.py [--quick] [harness options]
"""

from __future__ import annotations

import uuid

from harness import Backend, Contender, UnimqContender, main

BATCH = 1000


class Memory(UnimqContender):
    """The broker lives in this process: its CPU is the client's CPU."""

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        if not batch:
            await super().produce(dest, payloads, batch)
            return
        producer = self.broker.producer(dest)
        for offset in range(0, len(payloads), BATCH):
            await producer.send_many(payloads[offset:offset + BATCH])


def contenders(url: str) -> list[Contender]:
    return [Memory(url, prefetch=1000)]


BACKEND = Backend(
    name="memory",
    default_url=f"memory://bench-{uuid.uuid4().hex[:6]}?lock_timeout=60",
    contenders=contenders,
    quick_count=20_000,
    full_count=200_000,
    latency_rate=1000.0,
    notes=["in-process broker: no raw client; the bar is absolute (send_many ≥ 250,000 msg/s, "
           "consume + ack ≥ 150,000 msg/s)"],
)

if __name__ == "__main__":
    main(BACKEND)
