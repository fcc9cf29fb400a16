"""Consuming one group's queue: push deliveries buffered under basic.qos, and settlement.

The hot path goes under aio-pika: the subscription's channel is its own, so an :class:`_Inlet`
takes its deliveries from aiormq's connection reader as the frames arrive (basic.deliver, content
header, body) and appends them to a deque that ``basic.qos(prefetch)`` bounds; ``receive`` drains
it. That skips, per message, aiormq's channel frame queue and reader task, its task per delivery,
aio-pika's second task and its eagerly built ``IncomingMessage`` (``Delivery.native`` is one still,
built on first use). aio-pika keeps the consumer registered, so a recovered connection consumes
again; the first deliveries on the new channel reach ``_on_message``, which taps that channel too.
Settlement:

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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import aiormq
import aiormq.abc
import aiormq.exceptions as amqp_errors
from aio_pika import IncomingMessage
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, ConsumerTag
from aiormq.abc import DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from unimq.driver import AckBatch, ReceiveSettings, Subscription
from unimq.errors import PublishError
from unimq.message import Delivery, Message
from unimq.reliability import redelivery_copy
from unimq_rabbitmq import mapping

if TYPE_CHECKING:
    from unimq_rabbitmq.driver import RabbitMQDriver

#: Errors meaning the delivering channel is gone, so the broker will redeliver anyway.
LOST = (amqp_errors.ChannelInvalidStateError, amqp_errors.AMQPChannelError, amqp_errors.AMQPConnectionError)


def _open(raw: DeliveredMessage) -> aiormq.abc.AbstractChannel | None:
    """The channel that delivered ``raw``, or None once it is closed (the lock is lost)."""
    channel = raw.channel
    return None if channel.is_closed else channel


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _LazyIncoming(IncomingMessage):
    """aio-pika's ``IncomingMessage`` for ``Delivery.native``, built the first time it is read:
    building it eagerly (some 25 guarded attribute writes) cost more than the rest of the mapping."""

    def __init__(self, raw: DeliveredMessage) -> None:
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        raw = self.__dict__.pop("_raw", None)
        if raw is None:
            raise AttributeError(name)
        IncomingMessage.__init__(self, raw)
        return getattr(self, name)


class _Inlet:
    """Takes a channel's deliveries out of aiormq's frame hand-over, in the connection reader.

    aiormq's connection reader awaits ``channel.frames.put((weight, frame))`` for every frame; the
    inlet replaces that ``put`` on this channel's queue. A basic.deliver, its content header and
    body frames (AMQP sends them contiguously on a channel) become one ``DeliveredMessage`` handed
    to ``on_delivery`` synchronously; every other frame goes on to the queue as before (RPC
    replies, cancel, close), so the channel's reader still sees them.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel, on_delivery: Callable[[DeliveredMessage], None]) -> None:
        self.channel = channel
        self._on_delivery = on_delivery
        queue: asyncio.Queue[Any] = channel.frames
        self._forward = queue.put
        self._deliver: Basic.Deliver | None = None
        self._header: ContentHeader | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        queue.put = self.put  # type: ignore[method-assign]

    async def put(self, item: tuple[int, Any]) -> None:
        frame = item[1]
        if self._deliver is None:
            if isinstance(frame, Basic.Deliver):
                self._deliver = frame
                return
        elif self._header is None:
            if isinstance(frame, ContentHeader):
                self._header = frame
                if not frame.body_size:
                    self._complete(b"")
                return
        elif isinstance(frame, ContentBody):
            chunk = frame.value
            if not self._chunks and len(chunk) >= self._header.body_size:
                self._complete(chunk)
                return
            self._chunks.append(chunk)
            self._size += len(chunk)
            if self._size >= self._header.body_size:
                self._complete(b"".join(self._chunks))
            return
        await self._forward(item)

    def _complete(self, body: bytes) -> None:
        deliver, header = cast(Basic.Deliver, self._deliver), cast(ContentHeader, self._header)
        self._deliver = self._header = None
        self._chunks = []
        self._size = 0
        self._on_delivery(DeliveredMessage(delivery=deliver, header=header, body=body, channel=self.channel))


class _Tags:
    """The delivery tags of one channel not settled yet, to know which acks one frame may cover.

    Tags are per channel and increase; ``basic.ack(multiple=True)`` with tag ``t`` settles every
    outstanding tag up to ``t``, so it may only cover tags that are settled or acked with it.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self._order: deque[int] = deque()  # delivered tags, ascending; settled ones pruned lazily
        self._open: set[int] = set()  # delivered and not settled

    def delivered(self, tag: int) -> None:
        order = self._order
        if order and tag < order[-1]:  # reached aio-pika's callback after later tags came through the inlet
            self._order = order = deque(sorted((*order, tag)))
        else:
            order.append(tag)
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
        self._inbox: deque[tuple[DeliveredMessage, AbstractIncomingMessage | None]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: ConsumerTag | None = None
        self._tags: _Tags | None = None
        self._inlet: _Inlet | None = None
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
        self._tap(await self._channel.get_underlay_channel())
        self._tag = await self._queue.consume(self._on_message)

    def _tap(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Take this channel's deliveries through an inlet (a new channel: delivery tags restart).

        When the channel is lost, the broker requeues its unacked deliveries: those the core holds
        unread are forgotten, or they would be processed now and again when redelivered.
        """
        self._inlet = _Inlet(channel, self._on_delivered)
        self._tags = _Tags(channel)
        channel.closing.add_done_callback(lambda _: self.discard_unread(lambda d: d.token.channel is channel))

    def _on_delivered(self, raw: DeliveredMessage, incoming: AbstractIncomingMessage | None = None) -> None:
        tags = self._tags
        if tags is None or tags.channel is not raw.channel:
            tags = self._tags = _Tags(raw.channel)
        tags.delivered(cast(int, raw.delivery_tag))
        self._inbox.append((raw, incoming))
        if self._waiter is not None:
            _wake(self._waiter)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        """aio-pika's callback: only deliveries the inlet did not take (a recovered channel) get here."""
        try:
            channel = message.channel
        except amqp_errors.ChannelInvalidStateError:
            return  # delivered on a channel lost since: the broker redelivers it
        if self._inlet is None or self._inlet.channel is not channel:
            self._tap(channel)
        self._on_delivered(mapping.delivered(message), message)

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
        received = mapping.received
        while inbox and len(out) < max_messages:
            raw, incoming = inbox.popleft()
            if raw.channel.is_closed:
                continue  # delivered on a channel lost since: redelivered
            message, attempt, expires_at = received(raw)
            out.append(Delivery(message, attempt, incoming or _LazyIncoming(raw), raw, expires_at))
        return out

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        tags = self._tags
        if tags is None:
            return
        channel = tags.channel
        mine = [d.token.delivery.delivery_tag for d in deliveries if d.token.channel is channel]
        if mine and not channel.is_closed:
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
        self._inlet = None
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
        raw: DeliveredMessage = delivery.token
        tags = self._tags
        if tags is None or _open(raw) is not tags.channel:
            return  # the lock is lost: the broker redelivers it
        tag = cast(int, raw.delivery_tag)
        async with self._lock:
            with contextlib.suppress(*LOST):
                await tags.channel.basic_nack(tag, requeue=True, wait=False)
            tags.settled(tag)
