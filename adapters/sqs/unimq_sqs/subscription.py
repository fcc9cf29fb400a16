"""Consuming a queue: concurrent long polls that fill the prefetch, visibility as the lock.

Several ReceiveMessage calls (10 messages each) run in the poll pool to fill the room the core
asks for; results wait in a buffer bounded by that room, so prefetch stays bounded. An idle
queue is polled by one call at a time. What the core does around it (``unimq.settlement``): ack
batching (``ack_many`` is one DeleteMessageBatch), dropping expired messages, and ``reject()``
(SQS has no reject call: a copy to the dead-letter queue, then a delete). ``max_deliveries`` is
the queue's RedrivePolicy, enforced by SQS.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import botocore.exceptions  # type: ignore[import-untyped]

from unimq.driver import AckBatch, ReceiveSettings, Subscription
from unimq.message import Delivery
from unimq_sqs import mapping
from unimq_sqs.driver import _STALE_HANDLE, entry_error, error_code
from unimq_sqs.options import MAX_BATCH, MAX_VISIBILITY

if TYPE_CHECKING:
    from unimq_sqs.driver import SqsDriver


class SqsSubscription(Subscription):
    #: DeleteMessageBatch takes 10; 8 in flight keep up with 8 long polls (benchmarks/sqs_bench.py).
    ack_batch: ClassVar[AckBatch | None] = AckBatch(max_batch=MAX_BATCH, max_in_flight=8)

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

    @property
    def url(self) -> str:
        return self._url

    async def open(self) -> None:
        """Look the queue up; the lock in force is the consumer's, else the queue's VisibilityTimeout."""
        self._url = await self._driver.queue_url(self._destination)
        if self._visibility is not None:
            self.lock_timeout = float(self._visibility)
        else:
            attributes = await self._driver.call("get_queue_attributes", QueueUrl=self._url,
                                                 AttributeNames=["VisibilityTimeout"])
            self.lock_timeout = float(attributes["Attributes"]["VisibilityTimeout"])

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
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

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
        try:
            raw = await self._driver.poll(lambda: self._receive_now(kwargs))
        except Exception as exc:
            if not self._closed:
                self._error = exc
            return
        finally:
            self._requested -= count
            self._arrived.set()
        self._idle = not raw
        if self._closed:  # closed after the poll thread looked
            await self._release([m["ReceiptHandle"] for m in raw])
            return
        group = self._driver.options.default_group_id
        for item in raw:
            message, attempt, expires = mapping.decode(item, group)
            self._buffer.append(Delivery(message, attempt, item, item["ReceiptHandle"], expires or 0.0))

    def _receive_now(self, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """One ReceiveMessage, in a poll thread. A poll that returns after :meth:`close` (which does
        not wait for polls) makes its messages visible again from this thread, at once: it works
        even when the driver's pools were shut down meanwhile."""
        wire = self._driver.wire
        raw: list[dict[str, Any]] = wire.call("ReceiveMessage", kwargs).get("Messages", [])
        if raw and self._closed:
            for entries in _visible_now([m["ReceiptHandle"] for m in raw]):
                with contextlib.suppress(Exception):
                    wire.call("ChangeMessageVisibilityBatch", {"QueueUrl": self._url, "Entries": entries})
            return []
        return raw

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One DeleteMessageBatch (at most 10); a handle whose lock was lost counts as deleted."""
        for delivery in deliveries:
            self._unsettled.pop(delivery.token, None)
        entries = [{"Id": str(i), "ReceiptHandle": d.token} for i, d in enumerate(deliveries)]
        response = await self._driver.send("DeleteMessageBatch", {"QueueUrl": self._url, "Entries": entries})
        for failed in response.get("Failed", ()):
            if failed.get("Code") not in _STALE_HANDLE:
                raise entry_error(failed, f"ack on {self._destination}")

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        self._unsettled.pop(delivery.token, None)
        await self._visibility_to(delivery, math.ceil(delay) if delay else 0)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        await self._visibility_to(delivery, math.ceil(seconds))

    async def _visibility_to(self, delivery: Delivery, seconds: int) -> None:
        try:
            await self._driver.send("ChangeMessageVisibility", {
                "QueueUrl": self._url, "ReceiptHandle": delivery.token, "VisibilityTimeout": seconds})
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in _STALE_HANDLE:
                raise

    async def close(self) -> None:
        """Make every held message visible again at once; polls in flight are not waited for (what
        they return is made visible again as it arrives)."""
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        handles = [d.token for d in self._buffer] + list(self._unsettled)
        self._buffer.clear()
        self._unsettled.clear()
        await self._release(handles)

    async def _release(self, handles: list[str]) -> None:
        """ChangeMessageVisibilityBatch to 0, the batches concurrently; best effort (a message not
        released comes back when its visibility timeout ends)."""
        calls = [self._driver.send("ChangeMessageVisibilityBatch", {"QueueUrl": self._url, "Entries": entries})
                 for entries in _visible_now(handles)]
        if calls:
            await asyncio.gather(*calls, return_exceptions=True)


def _visible_now(handles: list[str]) -> list[list[dict[str, Any]]]:
    """ChangeMessageVisibilityBatch entries (visibility 0) for ``handles``, in batches of 10."""
    return [[{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(handles[s:s + MAX_BATCH])]
            for s in range(0, len(handles), MAX_BATCH)]
