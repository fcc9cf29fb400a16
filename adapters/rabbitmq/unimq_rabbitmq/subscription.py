"""Consuming one group's queue: push deliveries buffered under basic.qos, and settlement.

aio-pika pushes messages; they wait in a deque that ``basic.qos(prefetch)`` bounds, and
``receive`` drains it. Settlement:

- ack → basic.ack, coalesced once per event-loop turn: the acked prefix of the channel's
  delivered tags goes as one basic.ack(multiple=True), acks past an unsettled tag one by one;
- nack → quorum: basic.nack(requeue) (the broker counts it in ``x-delivery-count``);
  classic: republish a copy with ``x-unimq-attempt`` = attempt + 1, confirmed, then ack, because
  classic queues cannot count redeliveries;
- nack(delay) → copy into the TTL queue ``<queue>.delay.<ms>`` that dead-letters back, then ack;
- reject → copy with the reason into ``<destination>.dlq``, confirmed, then ack.

A message whose channel was lost is not settled at all: the broker redelivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, cast

import aiormq.abc
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, ConsumerTag

from unimq.driver import ReceiveSettings, Subscription
from unimq.errors import PublishError
from unimq.message import Delivery, Message
from unimq.reliability import ATTEMPT, dead_letter_copy
from unimq_rabbitmq import mapping

if TYPE_CHECKING:
    from unimq_rabbitmq.driver import RabbitMQDriver

#: Errors meaning the delivering channel is gone, so the broker will redeliver anyway.
LOST = (amqp_errors.ChannelInvalidStateError, amqp_errors.AMQPChannelError, amqp_errors.AMQPConnectionError)


def _alive(incoming: AbstractIncomingMessage) -> bool:
    try:
        return not incoming.channel.is_closed
    except amqp_errors.ChannelInvalidStateError:
        return False


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Acks:
    """The acks of one channel, sent once per event-loop turn instead of one frame per message.

    Delivery tags are per channel and increase; ``basic.ack(multiple=True)`` with tag ``t`` settles
    every outstanding tag up to ``t``. So the acks below the oldest tag still unsettled go as one
    frame, and acks past it one by one. A consumer draining its buffer acks many messages in one
    turn: one frame (and one socket write) instead of one per message.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self._order: deque[int] = deque()  # delivered tags, oldest first; settled ones pruned lazily
        self._open: set[int] = set()  # delivered and not settled
        self._pending: list[int] = []  # acked, frame not yet queued
        self._task: asyncio.Task[None] | None = None

    def delivered(self, tag: int) -> None:
        self._order.append(tag)
        self._open.add(tag)

    def settled(self, tag: int) -> None:
        """``tag`` was settled by a frame of its own (basic.nack)."""
        self._open.discard(tag)

    def ack(self, tag: int) -> None:
        self._open.discard(tag)
        self._pending.append(tag)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send())

    async def flush(self) -> None:
        """Queue every pending ack now (before the channel closes)."""
        if self._task is None and self._pending:
            self._task = asyncio.get_running_loop().create_task(self._send())
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _send(self) -> None:
        # One sender at a time: an ack(multiple) must not overtake single acks of tags it covers.
        try:
            while self._pending:
                pending, self._pending = self._pending, []
                order, unsettled = self._order, self._open
                while order and order[0] not in unsettled:
                    order.popleft()
                oldest = order[0] if order else None
                below = [tag for tag in pending if oldest is None or tag < oldest]
                past = [tag for tag in pending if oldest is not None and tag > oldest]
                if len(order) > 2 * len(unsettled) + 64:  # a long-held message: keep the deque bounded
                    self._order = deque(tag for tag in order if tag in unsettled)
                with contextlib.suppress(*LOST):  # the channel is gone: the broker redelivers
                    if below:
                        await self.channel.basic_ack(max(below), multiple=len(below) > 1, wait=False)
                    for tag in past:
                        await self.channel.basic_ack(tag, wait=False)
        finally:
            self._task = None


class RabbitMQSubscription(Subscription):
    def __init__(self, driver: RabbitMQDriver, destination: str, group: str | None, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._destination = destination
        self._group = group
        cap = driver.options.prefetch
        self._prefetch = min(settings.prefetch, cap) if cap else settings.prefetch
        self._quorum = driver.options.queue_type == "quorum"
        self._queue_name = driver.group_queue(destination, group)
        self._inbox: deque[AbstractIncomingMessage] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: ConsumerTag | None = None
        self._acks: _Acks | None = None

    async def open(self) -> None:
        connection = self._driver.native
        if connection is None:
            raise amqp_errors.ChannelInvalidStateError("rabbitmq: the driver is not connected")
        self._queue_name = await self._driver.declare_group(self._destination, self._group)
        self._channel = await connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._queue = await self._channel.declare_queue(self._queue_name, passive=True)
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            channel = message.channel
        except amqp_errors.ChannelInvalidStateError:
            return  # delivered on a channel lost since: the broker redelivers it
        acks = self._acks
        if acks is None or acks.channel is not channel:
            acks = self._acks = _Acks(channel)  # a new channel (recovered connection): tags restart
        acks.delivered(cast(int, message.delivery_tag))
        self._inbox.append(message)
        if self._waiter is not None:
            _wake(self._waiter)

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        inbox = self._inbox
        if not inbox and timeout > 0:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            handle = loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                self._waiter = None
        out: list[Delivery] = []
        while inbox and len(out) < max_messages:
            delivery = await self._accept(inbox.popleft())
            if delivery is not None:
                out.append(delivery)
        return out

    async def _accept(self, incoming: AbstractIncomingMessage) -> Delivery | None:
        """The Delivery for ``incoming``, or None when it must not reach the application."""
        if not _alive(incoming):
            return None  # delivered on a channel lost since: the broker redelivers it
        if mapping.expired(incoming):
            await self._ack(incoming)
            return None
        attempt = mapping.attempt(incoming)
        message = mapping.to_message(incoming)
        spec = self._driver.spec(self._destination)
        if spec is not None and spec.max_deliveries and attempt > spec.max_deliveries:
            await self._dead_letter(incoming, message, f"delivered {spec.max_deliveries} times without an ack")
            return None
        return Delivery(message, attempt, incoming)

    async def ack(self, delivery: Delivery) -> None:
        await self._ack(delivery.native)

    async def _ack(self, incoming: AbstractIncomingMessage) -> None:
        # basic.ack has no reply and a lost ack only means a redelivery: hand the tag to the
        # channel's coalescer rather than waiting for the socket (aio-pika's own ack() waits).
        acks = self._acks
        try:
            channel = incoming.channel
        except amqp_errors.ChannelInvalidStateError:
            return  # the lock is lost: the broker redelivers the message
        tag = cast(int, incoming.delivery_tag)
        if acks is not None and acks.channel is channel:
            acks.ack(tag)
            return
        with contextlib.suppress(*LOST):  # a channel this consumer does not track: ack directly
            await channel.basic_ack(tag, wait=False)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        incoming: AbstractIncomingMessage = delivery.native
        if not _alive(incoming):
            return
        if delay is None and self._quorum:
            with contextlib.suppress(*LOST):
                await incoming.nack(requeue=True)
                if self._acks is not None and self._acks.channel is incoming.channel:
                    self._acks.settled(cast(int, incoming.delivery_tag))
            return
        target = self._queue_name
        if delay:
            target = await self._driver.declare_delay_queue(self._queue_name, mapping.delay_bucket(delay), False)
        extra = {ATTEMPT: str(delivery.attempt + 1), mapping.KEY: delivery.message.key or ""}
        await self._send("", target, delivery.message, extra)
        await self._ack(incoming)

    async def reject(self, delivery: Delivery, reason: str) -> None:
        incoming: AbstractIncomingMessage = delivery.native
        if _alive(incoming):
            await self._dead_letter(incoming, delivery.message, reason)

    async def _dead_letter(self, incoming: AbstractIncomingMessage, message: Message, reason: str) -> None:
        exchange = await self._driver.declare_dead_letter(self._destination)
        copy = dead_letter_copy(message, reason, self._destination, self._group)
        await self._send(exchange, copy.key or "", copy, None)
        await self._ack(incoming)

    async def _send(self, exchange: str, key: str, message: Message, extra: dict[str, str] | None) -> None:
        props = mapping.properties(message, self._driver.options.persistent, extra)
        (error,) = await self._driver.send_raw([(exchange, key, message.body, props)])
        if error is not None:
            raise PublishError(f"rabbitmq: could not move message {message.message_id} to "
                               f"{exchange or key!r}: {error}", messages=[message], results=[error]) from error

    async def close(self) -> None:
        """Cancel the consumer and close the channel: the broker requeues what was not settled."""
        self._inbox.clear()
        if self._waiter is not None:
            _wake(self._waiter)
        channel, self._channel = self._channel, None
        if channel is None:
            return
        with contextlib.suppress(*LOST):
            try:
                if self._acks is not None:
                    await self._acks.flush()
                if self._queue is not None and self._tag is not None:
                    await self._queue.cancel(self._tag)
            finally:
                await channel.close()
