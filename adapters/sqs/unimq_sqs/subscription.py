"""Consuming a queue: concurrent long polls that fill the prefetch, batched deletes, visibility as lock.

Several ReceiveMessage calls (10 messages each) run in the poll pool to fill the room the core
asks for; results wait in a buffer bounded by that room, so prefetch stays bounded. An idle
queue is polled by one call at a time. Acks go through :class:`DeleteBatcher`: ``ack()`` waits
until the DeleteMessageBatch that carries its handle has returned; ``ack_many()`` sends its own
DeleteMessageBatch calls of 10.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import botocore.exceptions  # type: ignore[import-untyped]

from unimq.driver import ReceiveSettings, Subscription
from unimq.errors import CapabilityError, PublishError, UnimqError
from unimq.message import Delivery
from unimq.reliability import dead_letter_copy
from unimq_sqs import mapping
from unimq_sqs.driver import _STALE_HANDLE, entry_error, error_code, release
from unimq_sqs.options import MAX_BATCH, MAX_VISIBILITY

if TYPE_CHECKING:
    from unimq_sqs.driver import SqsDriver

#: Concurrent DeleteMessageBatch calls per consumer. One flushes at once; more start only for full
#: batches, so acks arriving during a call form full batches (fewer calls, less boto3 CPU).
DELETE_PARALLELISM = 4


class DeleteBatcher:
    """Coalesces deletes into DeleteMessageBatch calls; each ``delete()`` waits for its own result."""

    def __init__(self, driver: SqsDriver, url: str, destination: str) -> None:
        self._driver = driver
        self._url = url
        self._destination = destination
        self._pending: deque[tuple[str, asyncio.Future[None]]] = deque()
        self._running = 0  # flushers between start and their (synchronous) exit
        self._tasks: set[asyncio.Task[None]] = set()

    async def delete(self, handle: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((handle, future))
        if not self._running or (len(self._pending) >= MAX_BATCH and self._running < DELETE_PARALLELISM):
            self._running += 1
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await future

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # let the acks of this loop iteration join the batch
            pending = self._pending
            while pending:
                batch = [pending.popleft() for _ in range(min(MAX_BATCH, len(pending)))]
                await self._send(batch)
        finally:
            self._running -= 1

    async def _send(self, batch: list[tuple[str, asyncio.Future[None]]]) -> None:
        errors = await self.delete_batch([handle for handle, _ in batch])
        for (_, future), error in zip(batch, errors, strict=True):
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def delete_batch(self, handles: list[str]) -> list[UnimqError | None]:
        """One DeleteMessageBatch (at most 10 handles): per handle, None or its error.

        A handle whose lock was lost counts as deleted (an ack must not raise for it).
        """
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        try:
            response = await self._driver.call("delete_message_batch", QueueUrl=self._url, Entries=entries)
        except Exception as exc:
            return [self._driver.map_error(exc, f"ack on {self._destination}")] * len(handles)
        errors: list[UnimqError | None] = [None] * len(handles)
        for failed in response.get("Failed", ()):
            if failed.get("Code") not in _STALE_HANDLE:
                errors[int(failed["Id"])] = entry_error(failed, f"ack on {self._destination}")
        return errors

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class SqsSubscription(Subscription):
    def __init__(self, driver: SqsDriver, destination: str, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._destination = destination
        lock = settings.lock_timeout
        self._visibility = None if lock is None else min(MAX_VISIBILITY, max(1, math.ceil(lock)))
        self._url = ""
        self._buffer: deque[Delivery] = deque()
        self._unsettled: dict[str, Delivery] = {}
        self._polls: set[asyncio.Task[None]] = set()
        self._requested = 0  # messages asked for by the polls in flight
        self._idle = True
        self._arrived = asyncio.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._deletes: DeleteBatcher | None = None

    @property
    def url(self) -> str:
        return self._url

    async def open(self) -> None:
        self._url = await self._driver.queue_url(self._destination)
        self._deletes = DeleteBatcher(self._driver, self._url, self._destination)

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            if self._buffer:
                out = [self._take() for _ in range(min(max_messages, len(self._buffer)))]
                if not self._closed:
                    self._fill(max_messages - len(out))  # keep the polls going while these are handled
                return out
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._closed:
                return []
            self._fill(max_messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _take(self) -> Delivery:
        delivery = self._buffer.popleft()
        self._unsettled[delivery.token] = delivery
        return delivery

    def _fill(self, room: int) -> None:
        """Start polls for the room not yet covered by buffered messages and polls in flight."""
        want = room - len(self._buffer) - self._requested
        limit = 1 if self._idle else self._driver.options.max_receives
        while want > 0 and len(self._polls) < limit:
            if want < MAX_BATCH and self._polls:
                break  # wait for room for a full batch: fewer, fuller ReceiveMessage calls
            count = min(MAX_BATCH, want)
            want -= count
            self._requested += count
            task = asyncio.create_task(self._poll(count))
            self._polls.add(task)
            task.add_done_callback(self._polls.discard)

    async def _poll(self, count: int) -> None:
        kwargs: dict[str, Any] = {
            "QueueUrl": self._url, "MaxNumberOfMessages": count, "WaitTimeSeconds": self._driver.options.wait_time,
            "MessageAttributeNames": ["All"], "MessageSystemAttributeNames": (
                mapping.FIFO_SYSTEM_ATTRIBUTES if self._driver.is_fifo(self._destination)
                else mapping.SYSTEM_ATTRIBUTES),
        }
        if self._visibility is not None:
            kwargs["VisibilityTimeout"] = self._visibility
        client = self._driver.native
        try:
            response = await self._driver.poll(lambda: client.receive_message(**kwargs))
        except Exception as exc:
            if not self._closed:
                self._error = exc
            return
        finally:
            self._requested -= count
            self._arrived.set()
        raw = response.get("Messages", [])
        self._idle = not raw
        if self._closed:
            await release(self._driver, self._url, [m["ReceiptHandle"] for m in raw])
            return
        now = time.time()
        group = self._driver.options.default_group_id
        for item in raw:
            message, count_, expires = mapping.decode(item, group)
            if expires is not None and expires <= now:
                self._expire(item["ReceiptHandle"])
                continue
            self._buffer.append(Delivery(message, count_, item, item["ReceiptHandle"]))

    def _expire(self, handle: str) -> None:
        """Delete a message whose emulated TTL has passed; a failure only means a later retry."""
        assert self._deletes is not None
        task = asyncio.create_task(self._deletes.delete(handle))
        self._polls.add(task)
        task.add_done_callback(self._polls.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def ack(self, delivery: Delivery) -> None:
        self._unsettled.pop(delivery.token, None)
        assert self._deletes is not None
        await self._deletes.delete(delivery.token)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """DeleteMessageBatch per 10, concurrently; raises the first failure after all were tried.

        Uses the same call and error handling as single acks (which :class:`DeleteBatcher`
        coalesces), without a future per message: the batch is already formed.
        """
        assert self._deletes is not None
        handles = [d.token for d in deliveries]
        for handle in handles:
            self._unsettled.pop(handle, None)
        chunks = [handles[i:i + MAX_BATCH] for i in range(0, len(handles), MAX_BATCH)]
        if len(chunks) == 1:
            results = [await self._deletes.delete_batch(chunks[0])]
        else:
            results = await asyncio.gather(*(self._deletes.delete_batch(c) for c in chunks))
        for errors in results:
            for error in errors:
                if error is not None:
                    raise error

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        self._unsettled.pop(delivery.token, None)
        await self._visibility_to(delivery, math.ceil(delay) if delay else 0)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        if seconds > MAX_VISIBILITY:
            raise CapabilityError(f"sqs cannot extend a lock by {seconds:g}s: the limit is {MAX_VISIBILITY}s")
        await self._visibility_to(delivery, math.ceil(seconds))

    async def _visibility_to(self, delivery: Delivery, seconds: int) -> None:
        try:
            await self._driver.call("change_message_visibility", QueueUrl=self._url,
                                    ReceiptHandle=delivery.token, VisibilityTimeout=seconds)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in _STALE_HANDLE:
                raise

    async def reject(self, delivery: Delivery, reason: str) -> None:
        """Send a copy with the reason to the dead-letter queue, then delete: nothing is lost."""
        target = self._driver.dead_letter_destination(self._destination)
        await self._driver.queue_url(target, create=True)
        copy = dead_letter_copy(delivery.message, reason, self._destination, None)
        copy.ttl = None
        result = (await self._driver.publish(target, [copy]))[0]
        if result is not None:
            raise PublishError(f"could not dead-letter {copy.message_id} to {target}: {result}",
                               messages=[copy], results=[result])
        await self.ack(delivery)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        polls = [t for t in self._polls if not t.done()]
        if polls:
            await asyncio.wait(polls, timeout=self._driver.options.wait_time + 5)
        handles = [d.token for d in self._buffer] + list(self._unsettled)
        self._buffer.clear()
        self._unsettled.clear()
        if handles:
            await release(self._driver, self._url, handles)
        if self._deletes is not None:
            await self._deletes.drain()
