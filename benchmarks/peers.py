"""The peer libraries as harness contenders: FastStream (Kafka, RabbitMQ, NATS, Redis), Kombu (RabbitMQ, Redis, SQS).

Each is used the way its documentation recommends for throughput (FastStream's ``publish_batch``
where it has one and Redis pipelines; concurrent publishes otherwise), on the same broker and
workloads as the raw client and unimq. Kombu is synchronous: its work runs in threads, one pooled
connection per producer/consumer, and its CPU is counted with the rest of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from harness import Contender, Quota, Workload

logging.getLogger("faststream").setLevel(logging.WARNING)


def _quiet_kwargs() -> dict[str, Any]:
    return {"logger": None}


def _kombu() -> Any:
    """Kombu is untyped: used through Any."""
    import importlib

    return importlib.import_module("kombu")


async def _forever() -> None:
    await asyncio.Event().wait()


class _FastStream(Contender):
    """What every FastStream broker shares: start/stop, a dynamic subscriber per consumer."""

    name = "faststream"
    broker: Any

    def client(self) -> str:
        return f"FastStream {version('faststream')}"

    async def open(self) -> None:
        await self.broker.start()

    async def close(self) -> None:
        await self.broker.stop()

    def subscriber(self, dest: str, batch: bool | None) -> Any:
        """A subscriber; ``batch=None`` asks for the lowest-latency kind (the latency workload)."""
        raise NotImplementedError

    async def _run_subscriber(self, dest: str, batch: bool | None, handler: Callable[..., Any]) -> None:
        sub = self.subscriber(dest, batch)
        sub(handler)
        await sub.start()
        try:
            await _forever()
        finally:
            await sub.stop()

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        done = asyncio.Event()

        async def handler(body: Any) -> None:
            quota.take(len(body) if isinstance(body, list) else 1)
            if quota.finished:
                done.set()

        runner = asyncio.create_task(self._run_subscriber(dest, batch, handler))
        try:
            await done.wait()
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        async def handler(body: bytes) -> None:
            on_body(body)

        await self._run_subscriber(dest, None, handler)


class FastStreamRabbit(_FastStream):
    def __init__(self, url: str, prefetch: int, window: int) -> None:
        from faststream.rabbit import RabbitBroker

        self.broker = RabbitBroker(url.split("?", 1)[0], **_quiet_kwargs())
        self.prefetch = prefetch
        self.window = window

    def _queue(self, dest: str) -> Any:
        from faststream.rabbit import RabbitQueue

        return RabbitQueue(dest, durable=True)

    async def create(self, dest: str, w: Workload) -> None:
        await self.broker.declare_queue(self._queue(dest))

    async def delete(self, dest: str) -> None:
        queue = await self.broker.declare_queue(self._queue(dest))
        await queue.delete(if_unused=False, if_empty=False)

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        if not batch:
            for body in payloads:
                await self.broker.publish(body, queue=dest, persist=True)
            return
        gate = asyncio.Semaphore(self.window)

        async def one(body: bytes) -> None:
            async with gate:
                await self.broker.publish(body, queue=dest, persist=True)

        await asyncio.gather(*(one(body) for body in payloads))

    def subscriber(self, dest: str, batch: bool | None) -> Any:
        from faststream.rabbit import Channel

        return self.broker.subscriber(self._queue(dest), channel=Channel(prefetch_count=self.prefetch))

    async def send_one(self, dest: str, body: bytes) -> None:
        await self.broker.publish(body, queue=dest, persist=True)


class FastStreamRedis(_FastStream):
    """Redis Streams: pipelined XADD through ``publish(pipeline=)``; a consumer group per destination."""

    GROUP = "faststream"

    def __init__(self, url: str, batch_size: int, depth: int, read_count: int) -> None:
        from faststream.redis import RedisBroker

        self.broker = RedisBroker(url, **_quiet_kwargs())
        self.batch_size, self.depth, self.read_count = batch_size, depth, read_count
        self._consumers = 0

    async def create(self, dest: str, w: Workload) -> None:
        await self.broker._connection.xgroup_create(dest, self.GROUP, "0", mkstream=True)

    async def delete(self, dest: str) -> None:
        await self.broker._connection.delete(dest)

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        if not batch:
            for body in payloads:
                await self.broker.publish(body, stream=dest)
            return
        gate = asyncio.Semaphore(self.depth)

        async def one(chunk: list[bytes]) -> None:
            async with gate, self.broker._connection.pipeline(transaction=False) as pipe:
                for body in chunk:
                    await self.broker.publish(body, stream=dest, pipeline=pipe)
                await pipe.execute()

        await asyncio.gather(*(one(payloads[i:i + self.batch_size])
                               for i in range(0, len(payloads), self.batch_size)))

    def subscriber(self, dest: str, batch: bool | None) -> Any:
        from faststream.redis import StreamSub

        self._consumers += 1
        return self.broker.subscriber(stream=StreamSub(
            dest, group=self.GROUP, consumer=f"c{self._consumers}", batch=bool(batch),
            max_records=self.read_count if batch else None))

    async def send_one(self, dest: str, body: bytes) -> None:
        await self.broker.publish(body, stream=dest)


async def create_kafka_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` and wait until its partitions' leaders answer, as unimq's ``ensure()`` does,
    so no contender's timed run pays a new topic's NotLeaderForPartition retry (~0.1 s)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.structs import TopicPartition

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    inspector = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await inspector.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        await inspector.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await inspector.stop()
        await admin.close()


class FastStreamKafka(_FastStream):
    """``publish_batch`` per chunk that fits one record batch, the same producer settings as the raw side."""

    def __init__(self, bootstrap: str, **producer: Any) -> None:
        from faststream.kafka import KafkaBroker

        self.broker = KafkaBroker(bootstrap, **producer, **_quiet_kwargs())
        self.bootstrap = bootstrap
        self.max_batch_size = int(producer.get("max_batch_size", 16384))

    async def create(self, dest: str, w: Workload) -> None:
        await create_kafka_topic(self.bootstrap, dest, max(1, w.concurrency))

    async def delete(self, dest: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([dest])
        finally:
            await admin.close()

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        if not batch:
            for body in payloads:
                await self.broker.publish(body, topic=dest)
            return
        # publish_batch builds one aiokafka batch, so a chunk must fit max_batch_size; chunks are
        # sent without waiting (no_confirm) and awaited together, as the raw side does.
        per_batch = (self.max_batch_size - 128) // (len(payloads[0]) + 80) if payloads else 0
        futures = []
        for i in range(0, len(payloads), max(1, per_batch)):
            if per_batch >= 1:
                futures.append(await self.broker.publish_batch(*payloads[i:i + per_batch], topic=dest, no_confirm=True))
            else:
                futures.append(await self.broker.publish(payloads[i], topic=dest, no_confirm=True))
        await asyncio.gather(*futures)

    def subscriber(self, dest: str, batch: bool | None) -> Any:
        return self.broker.subscriber(dest, group_id=f"{dest}-fs", auto_offset_reset="earliest", batch=batch,
                                      max_records=1000 if batch else None)

    async def send_one(self, dest: str, body: bytes) -> None:
        await self.broker.publish(body, topic=dest)


class FastStreamNats(_FastStream):
    """JetStream: concurrent ``publish`` (each awaits its ack) in windows; a pull consumer fetching batches."""

    def __init__(self, url: str, window: int, fetch: int, stream_name: Callable[[str], str]) -> None:
        from faststream.nats import NatsBroker

        self.broker = NatsBroker(url, **_quiet_kwargs())
        self.window, self.fetch = window, fetch
        self.stream_name = stream_name

    async def create(self, dest: str, w: Workload) -> None:
        from nats.js import api

        await self.broker.config.connection_state.stream.add_stream(
            api.StreamConfig(name=self.stream_name(dest), subjects=[dest]))

    def _js(self) -> Any:
        return self.broker.config.connection_state.stream

    async def delete(self, dest: str) -> None:
        await self._js().delete_stream(self.stream_name(dest))

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        stream = self.stream_name(dest)
        if not batch:
            for body in payloads:
                await self.broker.publish(body, dest, stream=stream)
            return
        for i in range(0, len(payloads), self.window):
            await asyncio.gather(*(self.broker.publish(body, dest, stream=stream)
                                   for body in payloads[i:i + self.window]))

    def subscriber(self, dest: str, batch: bool | None) -> Any:
        from faststream.nats import JStream, PullSub

        stream = JStream(self.stream_name(dest), declare=False)
        if batch is None:
            return self.broker.subscriber(dest, stream=stream, durable="faststream-push")
        return self.broker.subscriber(dest, stream=stream, durable="faststream",
                                      pull_sub=PullSub(batch_size=self.fetch, batch=batch))

    async def send_one(self, dest: str, body: bytes) -> None:
        await self.broker.publish(body, dest, stream=self.stream_name(dest))


class Kombu(Contender):
    """Kombu's Producer/Consumer on a pooled connection per thread; no batch publish exists."""

    name = "kombu"

    def __init__(self, url: str, prefetch: int, transport_options: dict[str, Any] | None = None,
                 max_size: int | None = None) -> None:
        self.url = url
        self.prefetch = prefetch
        self.transport_options = transport_options or {}
        self.max_size = max_size

    def client(self) -> str:
        return f"Kombu {version('kombu')}"

    async def open(self) -> None:
        self.connection = _kombu().Connection(self.url, transport_options=self.transport_options)
        self.pool = self.connection.Pool(limit=24)
        await asyncio.to_thread(self._with_conn, lambda conn: conn.ensure_connection(max_retries=1))

    async def close(self) -> None:
        await asyncio.to_thread(self.pool.force_close_all)
        await asyncio.to_thread(self.connection.release)

    def _with_conn(self, work: Callable[[Any], Any]) -> Any:
        with self.pool.acquire(block=True, timeout=30) as conn:
            return work(conn)

    @staticmethod
    def _queue(dest: str) -> Any:
        kombu = _kombu()
        return kombu.Queue(dest, exchange=kombu.Exchange(dest, type="direct"), routing_key=dest, durable=True)

    async def create(self, dest: str, w: Workload) -> None:
        await asyncio.to_thread(self._with_conn, lambda conn: self._queue(dest)(conn.default_channel).declare())

    async def delete(self, dest: str) -> None:
        await asyncio.to_thread(self._with_conn, lambda conn: self._queue(dest)(conn.default_channel).delete())

    def _produce(self, conn: Any, dest: str, payloads: list[bytes]) -> None:
        queue = self._queue(dest)
        producer = conn.Producer(serializer=None)
        for body in payloads:
            producer.publish(body, exchange=queue.exchange, routing_key=dest, content_type="application/octet-stream",
                             content_encoding="binary", delivery_mode=2, declare=[], retry=False)

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        await asyncio.to_thread(self._with_conn, lambda conn: self._produce(conn, dest, payloads))

    def _drain(self, conn: Any, dest: str, on_message: Callable[[bytes], None], stop: Callable[[], bool]) -> None:
        def callback(body: bytes, message: Any) -> None:
            message.ack()
            on_message(body)

        with conn.Consumer([self._queue(dest)], callbacks=[callback], accept=["application/octet-stream"],
                           prefetch_count=self.prefetch):
            while not stop():
                with contextlib.suppress(socket.timeout):
                    conn.drain_events(timeout=0.5)

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        cancelled = threading.Event()
        try:
            await asyncio.to_thread(self._with_conn, lambda conn: self._drain(
                conn, dest, lambda body: quota.take(), lambda: quota.finished or cancelled.is_set()))
        finally:
            cancelled.set()

    async def send_one(self, dest: str, body: bytes) -> None:
        await asyncio.to_thread(self._with_conn, lambda conn: self._produce(conn, dest, [body]))

    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()

        def hand_over(body: bytes) -> None:
            loop.call_soon_threadsafe(on_body, body)

        try:
            await asyncio.to_thread(self._with_conn, lambda conn: self._drain(conn, dest, hand_over, cancelled.is_set))
        finally:
            cancelled.set()
