"""Consuming one group's queue: push deliveries buffered under basic.qos, and settlement.

aio-pika pushes messages; they wait in a deque that ``basic.qos(prefetch)`` bounds, and
``receive`` drains it. Settlement:

- ack → the core batches acks (``ack_batch``); a batch goes as one basic.ack(multiple=True) for
  its tags below the oldest tag still unsettled, and one basic.ack per tag past it;
- nack → quorum: basic.nack(requeue) (the broker counts it in ``x-delivery-count``); classic:
  the core's copy with ``x-unimq-attempt`` = attempt + 1 is republished into the queue, because
  classic queues cannot count redeliveries;
- nack(delay) → the copy goes to the TTL queue ``<queue>.delay.<ms>`` that dead-letters back;
- reject, expiry and ``max_deliveries`` are the core's (a copy to ``<destination>.dlq``, then an ack).

A message whose channel was lost is not settled at all: the broker redelivers it. Opening binds
the group's queue to what the consumer wants (``RabbitMQDriver.route_group``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import aiormq.abc
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, ConsumerTag

from unimq.driver import AckBatch, ReceiveSettings, Subscription
from unimq.errors import PublishError
from unimq.message import Delivery, Message
from unimq.reliability import redelivery_copy
from unimq_rabbitmq import mapping

if TYPE_CHECKING:
    from unimq_rabbitmq.driver import RabbitMQDriver

#: Errors meaning the delivering channel is gone, so the broker will redeliver anyway.
LOST = (amqp_errors.ChannelInvalidStateError, amqp_errors.AMQPChannelError, amqp_errors.AMQPConnectionError)


def _channel(incoming: AbstractIncomingMessage) -> aiormq.abc.AbstractChannel | None:
    """The channel that delivered ``incoming``, or None once it is closed (the lock is lost)."""
    try:
        channel = incoming.channel
    except amqp_errors.ChannelInvalidStateError:
        return None
    return None if channel.is_closed else channel


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Tags:
    """The delivery tags of one channel not settled yet, to know which acks one frame may cover.

    Tags are per channel and increase; ``basic.ack(multiple=True)`` with tag ``t`` settles every
    outstanding tag up to ``t``, so it may only cover tags that are settled or acked with it.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self._order: deque[int] = deque()  # delivered tags, oldest first; settled ones pruned lazily
        self._open: set[int] = set()  # delivered and not settled

    def delivered(self, tag: int) -> None:
        self._order.append(tag)
        self._open.add(tag)

    def settled(self, tag: int) -> None:
        """``tag`` was settled by a frame of its own (basic.nack)."""
        self._open.discard(tag)

    async def ack(self, tags: list[int]) -> None:
        """Settle ``tags``: one multiple ack below the oldest unsettled tag, single acks past it."""
        unsettled = self._open
        unsettled.difference_update(tags)
        order = self._order
        while order and order[0] not in unsettled:
            order.popleft()
        oldest = order[0] if order else None
        if len(order) > 2 * len(unsettled) + 64:  # a long-held message: keep the deque bounded
            self._order = deque(tag for tag in order if tag in unsettled)
        below = [tag for tag in tags if oldest is None or tag < oldest]
        if below:
            await self.channel.basic_ack(max(below), multiple=len(below) > 1, wait=False)
        for tag in tags:
            if oldest is not None and tag > oldest:
                await self.channel.basic_ack(tag, wait=False)


class RabbitMQSubscription(Subscription):
    """A classic queue: a nack is a republished copy (classic queues do not count redeliveries)."""

    #: One batch at a time: a multiple ack must not overtake the single acks of the tags it covers.
    ack_batch = AckBatch(max_batch=1000, max_in_flight=1)
    native_nack = False

    def __init__(self, driver: RabbitMQDriver, destination: str, group: str | None, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._destination = destination
        self._group = group
        cap = driver.options.prefetch
        self._prefetch = min(settings.prefetch, cap) if cap else settings.prefetch
        self._queue_name = driver.group_queue(destination, group)
        self._subject = settings.subject
        self._inbox: deque[AbstractIncomingMessage] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: ConsumerTag | None = None
        self._tags: _Tags | None = None
        self._lock = asyncio.Lock()  # frames that settle tags go out one call at a time

    async def open(self) -> None:
        connection = self._driver.native
        if connection is None:
            raise amqp_errors.ChannelInvalidStateError("rabbitmq: the driver is not connected")
        driver = self._driver
        self._queue_name = await driver.declare_group(self._destination, self._group)
        await driver.declare_dead_letter(self._destination)
        self.max_deliveries = await driver.max_deliveries_of(self._destination)
        self._channel = await connection.channel(publisher_confirms=False)
        await driver.route_group(self._channel, self._destination, self._group, self._subject)
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._queue = await self._channel.declare_queue(self._queue_name, passive=True)
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            channel = message.channel
        except amqp_errors.ChannelInvalidStateError:
            return  # delivered on a channel lost since: the broker redelivers it
        tags = self._tags
        if tags is None or tags.channel is not channel:
            tags = self._tags = _Tags(channel)  # a new channel (recovered connection): tags restart
        tags.delivered(cast(int, message.delivery_tag))
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
            incoming = inbox.popleft()
            if _channel(incoming) is not None:  # else delivered on a channel lost since: redelivered
                out.append(Delivery(mapping.to_message(incoming), mapping.attempt(incoming), incoming,
                                    None, mapping.expires_at(incoming)))
        return out

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        tags = self._tags
        if tags is None:
            return
        mine = [cast(int, d.native.delivery_tag) for d in deliveries if _channel(d.native) is tags.channel]
        if mine:
            async with self._lock:
                with contextlib.suppress(*LOST):  # the channel is gone: the broker redelivers
                    await tags.ack(mine)

    async def redeliver(self, copy: Message, delay: float | None) -> None:
        target = self._queue_name
        if delay:
            target = await self._driver.declare_delay_queue(self._queue_name, mapping.delay_bucket(delay), False)
        props = mapping.properties(copy, self._driver.options.persistent, {mapping.KEY: copy.key or ""})
        (error,) = await self._driver.send_raw([("", target, copy.body, props)])
        if error is not None:
            raise PublishError(f"rabbitmq: could not requeue message {copy.message_id} to {target!r}: {error}",
                               messages=[copy], results=[error]) from error

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
                if self._queue is not None and self._tag is not None:
                    await self._queue.cancel(self._tag)
            finally:
                await channel.close()


class QuorumSubscription(RabbitMQSubscription):
    """A quorum queue counts returns (``x-delivery-count``): a nack is the broker's basic.nack."""

    native_nack = True

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        if delay:  # no delayed requeue in AMQP: a copy waits in a TTL queue
            await self.redeliver(redelivery_copy(delivery.message, delivery.attempt + 1, delay), delay)
            await self.ack_many([delivery])
            return
        incoming: AbstractIncomingMessage = delivery.native
        tags = self._tags
        if tags is None or _channel(incoming) is not tags.channel:
            return  # the lock is lost: the broker redelivers it
        tag = cast(int, incoming.delivery_tag)
        async with self._lock:
            with contextlib.suppress(*LOST):
                await tags.channel.basic_nack(tag, requeue=True, wait=False)
            tags.settled(tag)
