"""Merged consumption: one logical stream read from the old and the new backend at once.

During a migration both backends may carry the same message (dual-publish, mirror). The merged
consumer yields each ``message_id`` once: a copy of a message already processed is acked and
dropped, and a copy that arrives while the first is still in flight waits for it — acked if the
first was acked, handed over if the first was nacked or dead-lettered. So consumers can move
before producers, with no loss and no double processing within the de-duplication window.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any, Protocol

from unimq.broker import Consumer
from unimq.message import Delivery
from unimq.reliability import DedupWindow


class ProcessedIds(Protocol):
    """Where processed message ids are remembered; in memory, or Redis for several processes."""

    async def seen(self, message_id: str) -> bool: ...

    async def mark(self, message_id: str) -> None: ...


class MemoryProcessedIds:
    def __init__(self, window: timedelta = timedelta(hours=1), max_entries: int = 1_000_000) -> None:
        self._window = DedupWindow(window.total_seconds(), max_entries)

    async def seen(self, message_id: str) -> bool:
        return message_id in self._window

    async def mark(self, message_id: str) -> None:
        self._window.seen(message_id)


class RedisProcessedIds:
    """Shared by every process of a consumer group: ``SET key NX EX window`` per message id."""

    def __init__(self, url: str, prefix: str = "unimq:processed:", window: timedelta = timedelta(hours=1)) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix
        self._ttl = max(1, int(window.total_seconds()))

    async def seen(self, message_id: str) -> bool:
        return bool(await self._redis.exists(self._prefix + message_id))

    async def mark(self, message_id: str) -> None:
        await self._redis.set(self._prefix + message_id, b"1", ex=self._ttl, nx=True)

    async def close(self) -> None:
        await self._redis.aclose()


class MergedDelivery(Delivery):
    """A delivery from one side of the merge; settling it also settles held duplicates."""

    __slots__ = ("inner", "merge", "side")

    def __init__(self, inner: Delivery, merge: MergedConsumer, side: int) -> None:
        super().__init__(inner.message, inner.attempt, inner.native, inner.token)
        self.payload = inner.payload
        self.inner = inner
        self.merge = merge
        self.side = side

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self.inner.ack()
            await self.merge._finished(self.message.message_id, processed=True)

    async def nack(self, delay: timedelta | float | None = None) -> None:
        if not self.settled:
            self.settled = True
            await self.inner.nack(delay)
            await self.merge._finished(self.message.message_id, processed=False)

    async def reject(self, reason: str = "") -> None:
        if not self.settled:
            self.settled = True
            await self.inner.reject(reason)
            await self.merge._finished(self.message.message_id, processed=False)

    async def extend(self, duration: timedelta | float) -> None:
        await self.inner.extend(duration)


class MergedConsumer:
    """Reads several consumers (old and new backend) as one de-duplicated async iterator."""

    def __init__(self, *consumers: Consumer, processed: ProcessedIds | None = None, buffer: int = 100) -> None:
        if len(consumers) < 2:
            raise ValueError("MergedConsumer needs at least two consumers")
        self.consumers = consumers
        self.processed = processed or MemoryProcessedIds()
        self.duplicates = 0
        self._queue: asyncio.Queue[MergedDelivery] = asyncio.Queue(buffer)
        self._in_flight: dict[str, list[MergedDelivery]] = {}
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> MergedConsumer:
        for consumer in self.consumers:
            await consumer.open()
        self._readers = [asyncio.create_task(self._read(i, c)) for i, c in enumerate(self.consumers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for consumer in self.consumers:
            await consumer.close()

    def __aiter__(self) -> MergedConsumer:
        return self

    async def __anext__(self) -> MergedDelivery:
        for task in self._readers:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return await self._queue.get()

    async def receive(self, timeout: float | None = None) -> MergedDelivery | None:
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except TimeoutError:
            return None

    async def _read(self, side: int, consumer: Consumer) -> None:
        async for inner in consumer:
            delivery = MergedDelivery(inner, self, side)
            message_id = delivery.message.message_id
            if await self.processed.seen(message_id):
                self.duplicates += 1
                await inner.ack()
                continue
            holders = self._in_flight.get(message_id)
            if holders is not None:
                holders.append(delivery)  # wait for the first copy's outcome
                continue
            self._in_flight[message_id] = [delivery]
            await self._queue.put(delivery)

    async def _finished(self, message_id: str, processed: bool) -> None:
        holders = self._in_flight.pop(message_id, [])
        waiting = [d for d in holders if not d.settled]
        if processed:
            await self.processed.mark(message_id)
            for duplicate in waiting:
                self.duplicates += 1
                duplicate.settled = True
                await duplicate.inner.ack()
        elif waiting:
            self._in_flight[message_id] = waiting
            await self._queue.put(waiting[0])

    @property
    def stats(self) -> dict[str, Any]:
        return {"duplicates": self.duplicates, "in_flight": len(self._in_flight)}
