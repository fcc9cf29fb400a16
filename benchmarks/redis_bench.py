"""Redis Streams: plain redis-py vs unimq vs FastStream and Kombu, on the shared harness.

* produce: plain pipelined XADD (batches of 1000, up to 8 pipelines in flight, as the core sends)
  vs ``producer.send_many``; batching off: one awaited XADD / ``send`` per message;
* consume: plain XREADGROUP COUNT 100 + one XACK per batch (batching off: one XACK per message)
  vs a unimq consumer: ``receive_batch(100)`` + ``ack_many`` (one XACK per batch), batching off
  ``receive`` + ``ack`` per message. Consumers share one group (competing);
* ``unimq-loop``: the idiomatic path whatever the batch flag — ``async for delivery in consumer:
  await delivery.ack()``, one message at a time, prefetch 1000 (the core batches the XACKs).

Kombu's Redis transport uses lists (LPUSH/BRPOP), not streams: same broker, its own structure.

    .venv/bin/python benchmarks/redis_bench.py [--quick] [--url redis://127.0.0.1:6379/0] [harness options]
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import peers
from harness import Backend, Contender, Quota, UnimqContender, UnimqLoop, Workload, main, peer
from redis.asyncio import Redis

BATCH = 1000
DEPTH = 8
READ_COUNT = 100
PER_MESSAGE_PREFETCH = 1000
GROUP = "plain"


class RedisPy(Contender):
    name = "raw"

    def __init__(self, url: str) -> None:
        self.url = url
        self._names = itertools.count()

    def client(self) -> str:
        return f"redis-py {version('redis')}"

    async def open(self) -> None:
        self.redis = Redis.from_url(self.url)

    async def close(self) -> None:
        await self.redis.aclose()

    async def create(self, dest: str, w: Workload) -> None:
        await self.redis.xgroup_create(dest, GROUP, "0", mkstream=True)

    async def delete(self, dest: str) -> None:
        await self.redis.delete(dest)

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        if not batch:
            for body in payloads:
                await self.redis.xadd(dest, {"body": body})
            return
        gate = asyncio.Semaphore(DEPTH)

        async def one(chunk: list[bytes]) -> None:
            async with gate, self.redis.pipeline(transaction=False) as pipe:
                for body in chunk:
                    pipe.xadd(dest, {"body": body})
                await pipe.execute()

        await asyncio.gather(*(one(payloads[i:i + BATCH]) for i in range(0, len(payloads), BATCH)))

    async def _read(self, dest: str, consumer: str, block: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply: Any = await self.redis.xreadgroup(GROUP, consumer, {dest: ">"}, count=READ_COUNT, block=block)
        return reply[0][1] if reply else []

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        consumer = f"c{next(self._names)}"
        while not quota.finished:
            entries = await self._read(dest, consumer, 1000)
            if not entries:
                continue
            ids = [entry_id for entry_id, _ in entries]
            if batch:
                await self.redis.xack(dest, GROUP, *ids)
            else:
                for entry_id in ids:
                    await self.redis.xack(dest, GROUP, entry_id)
            quota.take(len(ids))

    async def send_one(self, dest: str, body: bytes) -> None:
        await self.redis.xadd(dest, {"body": body})

    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        consumer = f"c{next(self._names)}"
        while True:
            entries = await self._read(dest, consumer, 1000)
            for _, fields in entries:
                on_body(fields[b"body"])
            if entries:
                await self.redis.xack(dest, GROUP, *(entry_id for entry_id, _ in entries))


def contenders(url: str) -> list[Contender]:
    return [
        RedisPy(url),
        UnimqContender(url, prefetch=READ_COUNT, group="unimq", receive_batch=READ_COUNT, start="earliest"),
        UnimqLoop(url, prefetch=PER_MESSAGE_PREFETCH, group="unimq", start="earliest"),
        *peer(lambda: peers.FastStreamRedis(url, batch_size=BATCH, depth=DEPTH, read_count=READ_COUNT)),
        *peer(lambda: peers.Kombu(url, prefetch=READ_COUNT)),
    ]


BACKEND = Backend(
    name="redis",
    default_url="redis://127.0.0.1:6379/0",
    contenders=contenders,
    quick_count=2_000,
    full_count=20_000,
    notes=["raw: pipelined XADD, 1000 per pipeline, 8 pipelines in flight; XREADGROUP COUNT 100 + XACK per batch",
           "unimq: send_many / receive_batch(100) + ack_many (batching on), send / receive + ack (off)",
           "unimq-loop: async for + ack() per message, prefetch 1000, in both modes (the core batches acks)",
           "FastStream: publish(pipeline=) in the same pipelines; StreamSub consumer group (batch=True when on)",
           "Kombu's Redis transport is list-based (LPUSH/BRPOP), one publish per round trip",
           "FastStream's batch stream subscriber JSON-dumps bodies: random binary fails (UnicodeDecodeError), "
           "so every backend's bodies are random ASCII"],
)

if __name__ == "__main__":
    main(BACKEND)
