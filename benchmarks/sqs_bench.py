"""SQS (ElasticMQ here): plain boto3 vs unimq vs Kombu, on the shared harness.

Raw side: SendMessageBatch of 10 (split further to stay under 256 KiB) with 8 batches in flight
from a thread pool per producer (unimq's ``send_many`` pipelines 8 batches too); consumers poll
ReceiveMessage ×10 from 8 threads each and delete with DeleteMessageBatch (batching off: one
DeleteMessage per message), boto3's default client config. ``raw+id`` is the same with a
message-id attribute on every message, as unimq sends: the ratio to ``raw`` is the cost of unimq
and its id, to ``raw+id`` unimq's alone. unimq consumes with 8 loops of ``receive_batch(10)`` +
``ack_many`` per consumer (batching off: ``broker.consume(concurrency=80, prefetch=80)``, one ``ack()`` per message),
the same 10 × 8 messages in flight. ``unimq-loop`` is the idiomatic path whatever the batch flag:
``async for delivery in consumer: await delivery.ack()``, one message at a time, prefetch 1000
(8 long polls in flight; the core batches the deletes).

    .venv/bin/python benchmarks/sqs_bench.py [--quick] [--url sqs://?endpoint_url=...] [harness options]
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Any

import boto3
import botocore.config
import peers
from harness import Backend, Contender, Quota, UnimqContender, UnimqLoop, Workload, main, peer

import unimq
from unimq.url import parse_url

BATCH = 10
#: Batches (raw: threads) in flight per producer or consumer, as unimq's PIPELINE_DEPTH.
DEPTH = 8
MAX_BATCH_BYTES = 262_144


def _chunks(payloads: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = [[]]
    size = 0
    for body in payloads:
        if len(out[-1]) == BATCH or (out[-1] and size + len(body) > MAX_BATCH_BYTES):
            out.append([])
            size = 0
        out[-1].append(body)
        size += len(body)
    return [c for c in out if c]


def _id_attribute() -> dict[str, Any]:
    """The message id as unimq's SQS mapping carries it (one String attribute, JSON)."""
    return {"unimq": {"DataType": "String", "StringValue": f'{{"message_id":"{os.urandom(16).hex()}"}}'}}


class Boto3(Contender):
    name = "raw"
    #: Send a message-id attribute as unimq does (the ``raw+id`` baseline).
    with_id = False

    def __init__(self, url: str) -> None:
        query = parse_url(url).query
        self.client_kwargs: dict[str, Any] = {
            "endpoint_url": query.get("endpoint_url"), "region_name": query.get("region", "us-east-1"),
            "aws_access_key_id": query.get("aws_access_key_id", "x"),
            "aws_secret_access_key": query.get("aws_secret_access_key", "x"),
        }
        self.urls: dict[str, str] = {}

    def client(self) -> str:
        return f"boto3 {version('boto3')}"

    async def open(self) -> None:
        self.sqs = boto3.client("sqs", config=botocore.config.Config(max_pool_connections=DEPTH * 8 + 8),
                                **self.client_kwargs)

    async def close(self) -> None:
        self.sqs.close()

    async def create(self, dest: str, w: Workload) -> None:
        self.urls[dest] = (await asyncio.to_thread(self.sqs.create_queue, QueueName=dest))["QueueUrl"]

    async def delete(self, dest: str) -> None:
        await asyncio.to_thread(self.sqs.delete_queue, QueueUrl=self.urls.pop(dest))

    def _send(self, url: str, bodies: list[bytes]) -> None:
        entries: list[dict[str, Any]] = [{"Id": str(i), "MessageBody": b.decode()} for i, b in enumerate(bodies)]
        if self.with_id:
            for entry in entries:
                entry["MessageAttributes"] = _id_attribute()
        response = self.sqs.send_message_batch(QueueUrl=url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(response["Failed"])

    def _produce(self, url: str, payloads: list[bytes], batch: bool) -> None:
        if not batch:
            for body in payloads:
                self._send_one(url, body)
            return
        with ThreadPoolExecutor(DEPTH) as pool:
            list(pool.map(lambda chunk: self._send(url, chunk), _chunks(payloads)))

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        await asyncio.to_thread(self._produce, self.urls[dest], payloads, batch)

    def _poll(self, url: str, batch: bool, on_body: Callable[[bytes], None], stop: Callable[[], bool]) -> None:
        while not stop():
            got = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=1,
                                           MessageAttributeNames=["All"]).get("Messages", [])
            if not got:
                continue
            if batch:
                self.sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
            else:
                for m in got:
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            for m in got:
                on_body(m["Body"].encode())

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        cancelled = threading.Event()

        def stop() -> bool:
            return quota.finished or cancelled.is_set()

        try:
            await asyncio.gather(*(asyncio.to_thread(self._poll, self.urls[dest], batch, lambda b: quota.take(), stop)
                                   for _ in range(DEPTH)))
        finally:
            cancelled.set()

    def _send_one(self, url: str, body: bytes) -> None:
        extra = {"MessageAttributes": _id_attribute()} if self.with_id else {}
        self.sqs.send_message(QueueUrl=url, MessageBody=body.decode(), **extra)

    async def send_one(self, dest: str, body: bytes) -> None:
        await asyncio.to_thread(self._send_one, self.urls[dest], body)


    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        try:
            await asyncio.to_thread(self._poll, self.urls[dest], True,
                                    lambda b: loop.call_soon_threadsafe(on_body, b), cancelled.is_set)
        finally:
            cancelled.set()


class Boto3WithId(Boto3):
    """boto3 carrying a message id attribute, as unimq does: the ratio to it is unimq's own cost."""

    name = "raw+id"
    with_id = True


class Unimq(UnimqContender):
    """unimq as a user writes it, 10 × 8 messages in flight per consumer (the raw side's 8 pollers × 10).

    Batching on: 8 loops of ``receive_batch(10)`` + ``ack_many`` on one consumer (prefetch 80), as the
    raw side's 8 threads of ReceiveMessage ×10 + DeleteMessageBatch. Off: ``broker.consume`` with
    80 handlers, each acking its own message.
    """

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        if batch:
            async with self._consumer(dest) as consumer:
                await asyncio.gather(*(self._batches(consumer, quota) for _ in range(DEPTH)))
            return
        stop = asyncio.Event()

        async def handler(delivery: unimq.Delivery) -> None:
            await delivery.ack()
            quota.take()
            if quota.finished:
                stop.set()

        await self.broker.consume(dest, handler, concurrency=BATCH * DEPTH, prefetch=BATCH * DEPTH, stop=stop)

    @staticmethod
    async def _batches(consumer: unimq.Consumer, quota: Quota) -> None:
        while not quota.finished:
            got = await consumer.receive_batch(BATCH, timeout=1.0)
            if got:
                quota.arrived()
                await consumer.ack_many(got)
                quota.take(len(got))


def contenders(url: str) -> list[Contender]:
    query = parse_url(url).query
    endpoint = str(query.get("endpoint_url", "http://127.0.0.1:9324")).split("://", 1)[1]
    return [
        Boto3(url),
        Boto3WithId(url),
        # The raw pollers long-poll 1 s; so does unimq here (its default is 2 s).
        Unimq(url + ("&" if "?" in url else "?") + "wait_time=1", prefetch=BATCH * DEPTH,
              ensure=lambda w: {"dead_letter": False}),
        UnimqLoop(url + ("&" if "?" in url else "?") + "wait_time=1", prefetch=1000,
                        ensure=lambda w: {"dead_letter": False}),
        *peer(lambda: peers.Kombu(f"sqs://x:x@{endpoint}", prefetch=BATCH,
                                          transport_options={"region": query.get("region", "us-east-1"),
                                                             "is_secure": False})),
    ]


BACKEND = Backend(
    name="sqs",
    default_url="sqs://?endpoint_url=http://127.0.0.1:9324&region=us-east-1",
    contenders=contenders,
    quick_count=500,
    full_count=3_000,
    latency_rate=100.0,
    notes=["ElasticMQ on the same machine: the client's CPU, not the network, bounds every side "
           "(raw: botocore; unimq: its own JSON-protocol calls on urllib3 for messages, boto3 for queues)",
           "raw: SendMessageBatch ×10, 8 in flight; 8 pollers × ReceiveMessage 10 + DeleteMessageBatch per consumer",
           "raw+id: raw with a message-id attribute on every message, as unimq sends (its floor on this client)",
           "both sides long-poll 1 s (unimq: wait_time=1)",
           "unimq-loop: async for + ack() per message, prefetch 1000, in both modes (the core batches deletes)",
           "unimq: send_many (8 batches in flight); 8 × receive_batch(10) + ack_many per consumer "
           "(batching off: broker.consume(concurrency=80, prefetch=80), one ack() each)",
           "Kombu's SQS transport: one SendMessage per publish (no batch API), JSON+base64 envelope"],
)

if __name__ == "__main__":
    main(BACKEND)
