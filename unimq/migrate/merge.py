"""Merged consumption: one logical stream read from the old and the new backend at once.

During a migration both backends may carry the same message (dual-publish, mirror). The merged
consumer yields each ``message_id`` once: a copy of a message already processed is acked and
dropped, and a copy that arrives while the first is still in flight waits for it — acked if the
first was acked, handed over if the first was nacked or dead-lettered. So consumers can move
before producers, with no loss and no double processing within the de-duplication window.

The processed ids live in an idempotency store (:mod:`unimq.idempotency`): in memory for one
process, or ``unimq_redis.idempotency.RedisStore`` shared by every process of the group, where
a claim is atomic, so two processes that receive the two copies at once do not both process it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from typing import Any

from unimq.broker import Consumer
from unimq.idempotency import Claim, LeaseStore, MemoryStore
from unimq.message import Delivery


class MemoryProcessedIds(MemoryStore):
    """The former in-memory processed-id window: a :class:`~unimq.idempotency.MemoryStore`
    remembering processed ids for ``window``. (``RedisProcessedIds`` moved to the Redis adapter:
    ``unimq_redis.idempotency.RedisStore``, or its ``RedisProcessedIds`` with the old signature.)"""

    def __init__(self, window: timedelta = timedelta(hours=1), max_entries: int = 1_000_000) -> None:
        super().__init__(remember=window, lease=min(30.0, window.total_seconds()), max_entries=max_entries)


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
    """Reads several consumers (old and new backend) as one de-duplicated async iterator.

    ``processed`` is the idempotency store (default: a :class:`MemoryProcessedIds`); pass a shared
    one (``RedisStore``) when several processes consume the merged stream. The first copy of a
    message claims its id; the store's lease is renewed while the application holds the delivery.
    """

    def __init__(self, *consumers: Consumer, processed: LeaseStore | None = None, buffer: int = 100) -> None:
        if len(consumers) < 2:
            raise ValueError("MergedConsumer needs at least two consumers")
        self.consumers = consumers
        self.processed = processed or MemoryProcessedIds()
        self.duplicates = 0
        self._queue: asyncio.Queue[MergedDelivery] = asyncio.Queue(buffer)
        self._in_flight: dict[str, list[MergedDelivery]] = {}  # this process's copies, per id
        self._owners: dict[str, str] = {}  # ids we hold a claim on, and the claim's owner token
        self._readers: list[asyncio.Task[None]] = []
        self._helpers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> MergedConsumer:
        for consumer in self.consumers:
            await consumer.open()
        self._readers = [asyncio.create_task(self._read(i, c)) for i, c in enumerate(self.consumers)]
        self._spawn(self._keep_claims())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        tasks = [*self._readers, *self._helpers]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for key, owner in list(self._owners.items()):
            with contextlib.suppress(Exception):
                await self.processed.release(key, owner)
        self._owners.clear()
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

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    async def _read(self, side: int, consumer: Consumer) -> None:
        async for inner in consumer:
            delivery = MergedDelivery(inner, self, side)
            message_id = delivery.message.message_id
            holders = self._in_flight.get(message_id)
            if holders is not None:
                holders.append(delivery)  # wait for the first copy's outcome
                continue
            self._in_flight[message_id] = [delivery]
            await self._admit(message_id)

    async def _admit(self, message_id: str) -> None:
        """Claim the id for this process's first waiting copy: hand it out, drop it, or wait."""
        owner = uuid.uuid4().hex
        state, _ = await self.processed.claim(message_id, owner)
        if state is Claim.CLAIMED:
            self._owners[message_id] = owner
            await self._queue.put(self._in_flight[message_id][0])
        elif state is Claim.DONE:
            await self._drop(self._in_flight.pop(message_id, []))
        else:
            self._spawn(self._wait_elsewhere(message_id))

    async def _wait_elsewhere(self, message_id: str) -> None:
        """Another process holds the claim: poll until it commits (drop ours) or it ends (ours)."""
        pause = 0.05
        while True:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            owner = uuid.uuid4().hex
            state, _ = await self.processed.claim(message_id, owner)
            if state is Claim.CLAIMED:
                self._owners[message_id] = owner
                await self._queue.put(self._in_flight[message_id][0])
                return
            if state is Claim.DONE:
                await self._drop(self._in_flight.pop(message_id, []))
                return

    async def _drop(self, copies: list[MergedDelivery]) -> None:
        for duplicate in copies:
            if not duplicate.settled:
                self.duplicates += 1
                duplicate.settled = True
                await duplicate.inner.ack()

    async def _keep_claims(self) -> None:
        while True:
            await asyncio.sleep(self.processed.lease / 3)
            for key, owner in list(self._owners.items()):
                with contextlib.suppress(Exception):
                    await self.processed.renew(key, owner)

    async def _finished(self, message_id: str, processed: bool) -> None:
        holders = self._in_flight.pop(message_id, [])
        owner = self._owners.pop(message_id, None)
        waiting = [d for d in holders if not d.settled]
        if processed:
            if owner is not None:
                await self.processed.commit(message_id, owner)
            await self._drop(waiting)
            return
        if owner is not None:
            await self.processed.release(message_id, owner)
        if waiting:
            self._in_flight[message_id] = waiting
            await self._admit(message_id)

    @property
    def stats(self) -> dict[str, Any]:
        return {"duplicates": self.duplicates, "in_flight": len(self._in_flight)}
