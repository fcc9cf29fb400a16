"""Kafka: plain aiokafka vs unimq vs FastStream, on the shared harness.

Producers use unimq's defaults on every side: acks=all, enable_idempotence=True, linger_ms=5,
max_batch_size=64 KiB. Batching on: the raw side sends a chunk of 10,000 records without awaiting
each, then awaits the chunk as a whole (unimq's ``send_many`` chunk size); off: one
``send_and_wait`` per record. Consumers of one group (topics have ``concurrency`` partitions) read
a topic written by unimq, so records carry the same ``message-id`` header on both sides; the raw
consumer commits every 100 ms (batching on: ``getmany``, off: ``getone``); unimq acks every message
(contiguous-offset commits; batching on: ``receive_batch`` + ``ack_many``, off: ``receive`` +
``ack``). Consume throughput counts from the first record to the last: group join is not throughput.

``unimq-loop`` is the idiomatic per-message path as its own row: ``async for delivery in consumer:
await delivery.ack()`` (batching on or off alike), against the raw client reading in batches. Run it
alone with ``--ops consume --batch on --concurrency 1 --contenders raw,raw-loop,unimq,unimq-loop``.
``raw-loop`` (consume only) is the floor of any per-message API over aiokafka: the raw batches
handed out one record at a time through an async iterator, one small object and an awaited no-op
ack each; what ``unimq-loop`` spends above it is unimq's own.

    .venv/bin/python benchmarks/kafka_bench.py [--quick] [--url kafka://127.0.0.1:9092] [harness options]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import peers
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from harness import Backend, Contender, Quota, UnimqContender, UnimqLoop, Workload, main, peer

BATCH = 10_000  # the adapter's batch_send limit: send_many sends chunks of this size
PREFETCH = 1000
PRODUCER: dict[str, Any] = {"acks": "all", "enable_idempotence": True, "linger_ms": 5, "max_batch_size": 65536}


def bootstrap_of(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0].rsplit("@", 1)[-1]


class AioKafka(Contender):
    name = "raw"
    fill_by = "unimq"

    def __init__(self, url: str) -> None:
        self.bootstrap = bootstrap_of(url)

    def client(self) -> str:
        return f"aiokafka {version('aiokafka')}"

    async def open(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, **PRODUCER)
        await self.producer.start()
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self.admin.start()

    async def close(self) -> None:
        await self.producer.stop()
        await self.admin.close()

    async def create(self, dest: str, w: Workload) -> None:
        await peers.create_kafka_topic(self.bootstrap, dest, max(1, w.concurrency))

    async def delete(self, dest: str) -> None:
        await self.admin.delete_topics([dest])

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        if not batch:
            for body in payloads:
                await self.producer.send_and_wait(dest, body)
            return
        for first in range(0, len(payloads), BATCH):
            futures = [await self.producer.send(dest, body) for body in payloads[first:first + BATCH]]
            await asyncio.wait(futures)

    def _consumer(self, dest: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(dest, bootstrap_servers=self.bootstrap, group_id=f"{dest}-raw",
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=100)

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        consumer = self._consumer(dest)
        try:
            await consumer.start()  # inside: a run cancelled while joining must stop the member too
            last_commit = time.perf_counter()
            while not quota.finished:
                if batch:
                    got = await consumer.getmany(timeout_ms=100)
                    seen = sum(len(records) for records in got.values())
                else:
                    try:
                        await asyncio.wait_for(consumer.getone(), 0.1)
                        seen = 1
                    except TimeoutError:
                        seen = 0
                if seen:
                    quota.take(seen)
                last_commit = await _commit_due(consumer, last_commit)
            await consumer.commit()
        finally:
            await consumer.stop()

    async def send_one(self, dest: str, body: bytes) -> None:
        await self.producer.send_and_wait(dest, body)

    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        consumer = self._consumer(dest)
        try:
            await consumer.start()
            async for record in consumer:
                on_body(record.value)
                await consumer.commit()
        finally:
            await consumer.stop()


async def _commit_due(consumer: AIOKafkaConsumer, last: float) -> float:
    """The raw consumers' commit cadence (every 100 ms); returns when it last committed."""
    if time.perf_counter() - last < 0.1:
        return last
    await consumer.commit()
    return time.perf_counter()


class _Record:
    """One small object per record, with an awaited no-op ack: the least a per-message API builds."""

    __slots__ = ("record", "settled")

    def __init__(self, record: Any) -> None:
        self.record = record
        self.settled = False

    async def ack(self) -> None:
        self.settled = True


class AioKafkaLoop(AioKafka):
    """The floor of any per-message async API over aiokafka, as a calibration row: raw ``getmany``
    batches handed out one record at a time through an async iterator, one small object and one
    awaited no-op ack per record, commits as raw. What unimq-loop spends above it is unimq's own."""

    name = "raw-loop"
    ops = ("consume",)

    async def _records(self, consumer: AIOKafkaConsumer) -> Any:
        while True:
            got = await consumer.getmany(timeout_ms=100)
            for records in got.values():
                for record in records:
                    yield _Record(record)

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        consumer = self._consumer(dest)
        try:
            await consumer.start()
            last_commit = time.perf_counter()
            async for item in self._records(consumer):
                await item.ack()
                quota.take(1)
                if quota.finished:
                    break
                last_commit = await _commit_due(consumer, last_commit)
            await consumer.commit()
        finally:
            await consumer.stop()


def contenders(url: str) -> list[Contender]:
    bootstrap = bootstrap_of(url)
    return [
        AioKafka(url),
        AioKafkaLoop(url),
        UnimqContender(url, prefetch=PREFETCH, receive_batch=PREFETCH, group=lambda dest: f"{dest}-unimq",
                       ensure=lambda w: {"partitions": max(1, w.concurrency), "dead_letter": False}),
        UnimqLoop(url, prefetch=PREFETCH, group=lambda dest: f"{dest}-unimq",
                  ensure=lambda w: {"partitions": max(1, w.concurrency), "dead_letter": False}, fill_by="unimq"),
        *peer(lambda: peers.FastStreamKafka(bootstrap, **PRODUCER)),
    ]


BACKEND = Backend(
    name="kafka",
    default_url="kafka://127.0.0.1:9092",
    contenders=contenders,
    quick_count=3_000,
    full_count=30_000,
    consume_from_first=True,
    notes=["producers: acks=all, idempotent, linger 5 ms, 64 KiB batches; batching on: 10,000 records then await",
           "topics have `concurrency` partitions; the raw consumer reads a topic written by unimq",
           "consume counted from the first record (group join excluded); raw commits every 100 ms",
           "unimq consume: receive_batch(1000) + ack_many (batching on), receive + ack (off)",
           "unimq-loop: async for + ack() per message, prefetch 1000 (the idiomatic path)",
           "raw-loop (consume only): raw getmany records one at a time through an async iterator, one object "
           "and an awaited no-op ack each: the floor of any per-message API on this client",
           "FastStream: publish_batch per chunk that fits one 64 KiB record batch, unawaited, then awaited together"],
)

if __name__ == "__main__":
    main(BACKEND)
