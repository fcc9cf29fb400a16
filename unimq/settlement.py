"""Settlement semantics, once for every backend: the receive and settle rules of a consumer.

On receipt:
  - a delivery whose emulated TTL has passed (``Delivery.expires_at``) is acked and dropped;
  - a delivery past the destination's ``max_deliveries`` is dead-lettered with the reason
    "delivered N times without an ack" (the limit comes from ``Subscription.max_deliveries``,
    which the driver reads from where every process sees it).
Settling:
  - ``ack``: queued to the :class:`AckBatcher` within the subscription's ``ack_batch`` limits;
  - ``nack(delay)``: the broker's own redelivery (``native_nack``), or a redelivery copy
    (attempt + 1, not-before time) handed to ``Subscription.redeliver``, then an ack;
  - ``reject(reason)``: the broker's dead-letter queue (``native_reject``), or a dead-letter copy
    published to ``Driver.dead_letter_destination``, then an ack (``PublishError`` if the copy
    cannot be published: the original then stays unsettled and comes back);
  - attempt counting from headers (``x-unimq-attempt``) for backends that redeliver by copy.
Capability checks (``nack_delay``, ``dead_letter``, ``lock_extension``) happen here, before any
driver call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from unimq import telemetry
from unimq.capabilities import Capabilities, check_limit
from unimq.driver import AckBatch, Driver, Subscription
from unimq.errors import CapabilityError, ConfigError, PublishError, UnimqError
from unimq.message import Delivery, Message
from unimq.middleware import Middleware
from unimq.patterns import reply_message
from unimq.reliability import dead_letter_copy, redelivery_copy

T = TypeVar("T")
log = logging.getLogger("unimq.consumer")


class AckBatcher:
    """Sends acks in batches in the background, within the subscription's :class:`AckBatch` limits.

    ``add()`` queues an ack and returns at once (the per-message ``async for`` + ``ack()`` loop
    costs no round trip per message); one flush task per free slot sends what has queued. When
    ``max_in_flight`` flushes run and a full batch waits, ``add()`` waits for a slot, so the queue
    stays bounded. ``flush()`` waits until everything queued was sent (consumer close).
    A failed ``ack_many`` is logged: its messages come back (at-least-once), nothing is raised
    into an unrelated task.
    """

    def __init__(self, send: Callable[[Sequence[Delivery]], Awaitable[None]], limits: AckBatch, where: str) -> None:
        self._send = send
        self._max_batch = limits.max_batch
        self._max_in_flight = limits.max_in_flight
        self._where = where
        self._queue: list[Delivery] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Event | None = None

    def add(self, delivery: Delivery) -> Awaitable[None] | None:
        """Queue ``delivery``; return an awaitable only when the caller must wait for room."""
        self._queue.append(delivery)
        if len(self._flushers) < self._max_in_flight:
            self._start()
            return None
        if len(self._queue) >= self._max_batch * self._max_in_flight:
            return self._wait_for_room()
        return None

    def _start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_loop())
        self._flushers.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._flushers.discard(task)
        if self._queue and len(self._flushers) < self._max_in_flight:
            self._start()
        elif not self._flushers and self._idle is not None:
            self._idle.set()

    async def _flush_loop(self) -> None:
        await asyncio.sleep(0)  # let the acks of this loop iteration join the batch
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%d acks on %s failed; those messages will be redelivered: %s",
                            len(batch), self._where, exc)

    async def _wait_for_room(self) -> None:
        while len(self._queue) >= self._max_batch * self._max_in_flight and self._flushers:
            await asyncio.wait(set(self._flushers), return_when=asyncio.FIRST_COMPLETED)

    async def flush(self) -> None:
        """Wait until every queued ack has been sent (or failed)."""
        if self._queue and not self._flushers:
            self._start()
        while self._flushers:
            await asyncio.wait(set(self._flushers))


class Settlement:
    """The settlement rules for one consumer; what every :class:`Delivery` of it settles through."""

    def __init__(
        self,
        driver: Driver,
        subscription: Subscription,
        caps: Capabilities,
        destination: str,
        group: str | None,
        released: Callable[[int], None],
        acked: Sequence[Middleware] = (),
        wanted: Callable[[Message], bool] | None = None,
        send: Callable[[str, Message], Awaitable[Message]] | None = None,
    ) -> None:
        self.destination = destination
        self.group = group
        self._driver = driver
        self._sub = subscription
        self._caps = caps
        self._released = released
        self._acked = tuple(acked)
        self._wanted = wanted
        self._send = send
        limits = subscription.ack_batch
        self._batcher = AckBatcher(self._ack_processed, limits, destination) if limits else None
        self._backend = caps.backend

    # Receipt

    async def admit(self, deliveries: list[Delivery]) -> list[Delivery]:
        """The deliveries a consumer hands out: expired ones acked, exhausted ones dead-lettered,
        those the group's routing filter does not want acked for this group."""
        limit = self._sub.max_deliveries
        wanted = self._wanted
        now = 0.0
        out: list[Delivery] = []
        dropped: list[Delivery] = []
        for delivery in deliveries:
            delivery._settler = self
            if wanted is not None and not wanted(delivery.message):
                delivery.settled = True
                dropped.append(delivery)
                continue
            if delivery.expires_at:
                now = now or time.time()
                if delivery.expires_at <= now:
                    delivery.settled = True
                    if self._sub.dead_letter_expired:
                        with contextlib.suppress(UnimqError):  # not dead-lettered now: it comes back
                            await self._dead_letter(delivery, "expired (ttl) before it was received")
                    else:
                        dropped.append(delivery)
                    continue
            if limit is not None and delivery.attempt > limit:
                delivery.settled = True
                with contextlib.suppress(UnimqError):  # not dead-lettered now: it comes back, and is tried again
                    await self._dead_letter(delivery, f"delivered {limit} times without an ack")
                continue
            out.append(delivery)
        if dropped:
            size = self._sub.ack_batch.max_batch if self._sub.ack_batch else len(dropped)
            for start in range(0, len(dropped), size):
                await self._ack_now(dropped[start:start + size])
        return out

    # Settler: what Delivery calls

    def ack(self, delivery: Delivery) -> Awaitable[None] | None:
        """Queue the ack (None: nothing to wait for), or the awaitable that sends or waits for it."""
        batcher = self._batcher
        if batcher is not None:
            self._settled(delivery, "ack")
            return batcher.add(delivery)
        return self._ack_one(delivery)

    async def _ack_one(self, delivery: Delivery) -> None:
        try:
            await self._sub.ack_many((delivery,))
        except UnimqError:
            raise
        except Exception as exc:
            raise self._driver.map_error(exc, f"ack on {self.destination}") from exc
        finally:
            self._settled(delivery, "ack")
        if self._acked:
            await self._notify_acked((delivery,))

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack now, in batches of at most ``ack_batch.max_batch``, and wait for the broker."""
        limits = self._sub.ack_batch
        size = limits.max_batch if limits else len(deliveries) or 1
        parallel = limits.max_in_flight if limits else 1
        chunks = [deliveries[start:start + size] for start in range(0, len(deliveries), size)]
        try:
            if len(chunks) == 1:
                await self._ack_processed(chunks[0])  # the usual case: no Task and loop turn of gather
            else:
                for first in range(0, len(chunks), parallel):
                    await asyncio.gather(*(self._ack_processed(chunk) for chunk in chunks[first:first + parallel]))
        finally:
            if telemetry.current is not None:
                for delivery in deliveries:
                    telemetry.current.settled(self._backend, self.destination, self.group, delivery, "ack")
            self._released(len(deliveries))

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        if delay:
            check_limit(self._caps, "nack(delay=...)", "nack_delay", delay,
                        "nack() without a delay, or sleep before nack().")
        delivery.settled = True
        try:
            if self._sub.native_nack:
                await self._guard(self._sub.nack(delivery, delay), "nack on")
            else:
                copy = redelivery_copy(delivery.wire or delivery.message, delivery.attempt + 1, delay)
                await self._guard(self._sub.redeliver(copy, delay), "redeliver on")
                await self._ack_now((delivery,))
        finally:
            self._settled(delivery, "nack")

    async def reject(self, delivery: Delivery, reason: str) -> None:
        if not self._caps.dead_letter:
            raise CapabilityError.unsupported(self._backend, "reject()", "dead_letter",
                                              "ack() and record the failure yourself.")
        delivery.settled = True
        try:
            await self._dead_letter(delivery, reason)
        finally:
            self._settled(delivery, "reject")

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        check_limit(self._caps, "extend()", "lock_extension", seconds,
                    "Use a longer lock_timeout, or ack and track progress yourself.")
        await self._guard(self._sub.extend(delivery, seconds), "extend on")

    async def reply(self, delivery: Delivery, body: bytes, fields: dict[str, Any]) -> Message:
        if self._send is None:
            raise ConfigError("this consumer cannot send replies")
        reply_to, message = reply_message(delivery, body, dict(fields))
        return await self._send(reply_to, message)

    # Shared by the rules above

    async def flush(self) -> None:
        """Send every queued ack (called by the consumer's close, before the subscription's)."""
        if self._batcher is not None:
            await self._batcher.flush()

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        if self._sub.native_reject:
            await self._guard(self._sub.reject(delivery, reason), "reject on")
            return
        target = self._driver.dead_letter_destination(self.destination)
        copy = dead_letter_copy(delivery.wire or delivery.message, reason, self.destination, self.group,
                                delivery.attempt)
        try:
            results = await self._guard(self._driver.publish(target, [copy]), f"dead-letter to {target} from")
        except UnimqError as exc:
            raise PublishError(f"could not dead-letter {delivery.message.message_id} to {target}: {exc}",
                               messages=[copy], results=[exc], retryable=exc.retryable) from exc
        if results and results[0] is not None:
            raise PublishError(f"could not dead-letter {delivery.message.message_id} to {target}: {results[0]}",
                               messages=[copy], results=list(results))
        await self._ack_now((delivery,))

    async def _ack_processed(self, deliveries: Sequence[Delivery]) -> None:
        """Ack deliveries a handler processed, then tell the middlewares that asked (``on_acked``)."""
        await self._ack_now(deliveries)
        if self._acked:
            await self._notify_acked(deliveries)

    async def _notify_acked(self, deliveries: Sequence[Delivery]) -> None:
        for middleware in self._acked:
            try:
                await middleware.on_acked(self.destination, deliveries)
            except Exception as exc:
                log.warning("middleware %s failed after an ack on %s: %s", type(middleware).__name__,
                            self.destination, exc)

    async def _ack_now(self, deliveries: Sequence[Delivery]) -> None:
        await self._guard(self._sub.ack_many(deliveries), "ack on")

    def _settled(self, delivery: Delivery, outcome: str) -> None:
        if telemetry.current is not None:
            telemetry.current.settled(self._backend, self.destination, self.group, delivery, outcome)
        self._released(1)

    async def _guard(self, awaitable: Awaitable[T], action: str) -> T:
        try:
            return await awaitable
        except UnimqError:
            raise
        except Exception as exc:
            raise self._driver.map_error(exc, f"{action} {self.destination}") from exc
