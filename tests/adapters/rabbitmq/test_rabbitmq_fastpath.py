"""The hot paths under aio-pika: deliveries taken from aiormq's frame hand-over (the inlet) and
publisher confirms settled in the connection reader. Unit tests on frames, then the broker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import aio_pika
import aiormq
import pytest
from aiormq.abc import DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from rabbitmq_support import URL
from unimq_rabbitmq.driver import _Confirms
from unimq_rabbitmq.subscription import _Inlet, _LazyIncoming

import unimq


class FakeChannel:
    """What the inlets touch on an aiormq channel: its frame queue, its confirm settlement."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.is_closed = False
        self.confirmed: list[int] = []

    def _confirm_delivery(self, tag: int, frame: Any) -> None:
        self.confirmed.append(tag)


def deliver(tag: int) -> Basic.Deliver:
    return Basic.Deliver(consumer_tag="c", delivery_tag=tag, exchange="x", routing_key="k")


def header(size: int) -> ContentHeader:
    return ContentHeader(body_size=size, properties=Basic.Properties(message_id=f"m{size}"))


async def test_inlet_joins_frames_into_deliveries_and_forwards_the_rest() -> None:
    channel = FakeChannel()
    got: list[DeliveredMessage] = []
    _Inlet(cast(aiormq.abc.AbstractChannel, channel), got.append)
    put = channel.frames.put
    await put((0, Basic.ConsumeOk(consumer_tag="c")))
    await put((0, deliver(1)))
    await put((0, header(0)))  # an empty body has no body frame
    await put((0, deliver(2)))
    await put((0, header(5)))
    await put((0, ContentBody(b"ab")))
    await put((0, ContentBody(b"cde")))
    await put((0, deliver(3)))
    await put((0, header(3)))
    await put((0, ContentBody(b"xyz")))
    await put((0, Basic.CancelOk(consumer_tag="c")))
    assert [(m.delivery_tag, m.body) for m in got] == [(1, b""), (2, b"abcde"), (3, b"xyz")]
    assert all(m.channel is cast(object, channel) for m in got)
    forwarded = [channel.frames.get_nowait()[1] for _ in range(channel.frames.qsize())]
    assert [type(f) for f in forwarded] == [Basic.ConsumeOk, Basic.CancelOk]


async def test_inlet_forwards_content_that_does_not_follow_a_delivery() -> None:
    """A header whose basic.deliver was queued before the inlet existed goes on to the channel's reader."""
    channel = FakeChannel()
    got: list[DeliveredMessage] = []
    _Inlet(cast(aiormq.abc.AbstractChannel, channel), got.append)
    await channel.frames.put((0, header(2)))
    await channel.frames.put((0, ContentBody(b"hi")))
    assert got == []
    assert channel.frames.qsize() == 2


async def test_confirms_settle_in_place_unless_frames_wait_before_them() -> None:
    channel = FakeChannel()
    _Confirms(cast(aiormq.Channel, channel))
    put = channel.frames.put
    await put((0, Basic.Ack(delivery_tag=1)))
    assert channel.confirmed == [1] and channel.frames.empty()
    await put((0, Basic.Ack(delivery_tag=3, multiple=True)))  # aiormq settles the range
    await put((0, Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="x", routing_key="k")))
    await put((0, Basic.Ack(delivery_tag=4)))  # behind a queued return: must not overtake it
    await put((0, Basic.Nack(delivery_tag=5)))
    assert channel.confirmed == [1]
    assert [type(channel.frames.get_nowait()[1]) for _ in range(4)] == [Basic.Ack, Basic.Return, Basic.Ack, Basic.Nack]


def test_lazy_native_is_aio_pikas_message_built_on_first_read() -> None:
    raw = DeliveredMessage(
        delivery=deliver(7),
        header=ContentHeader(body_size=2, properties=Basic.Properties(headers={"h": "v"}, message_id="m")),
        body=b"hi", channel=cast(aiormq.abc.AbstractChannel, FakeChannel()))
    native = _LazyIncoming(raw)
    assert isinstance(native, aio_pika.abc.AbstractIncomingMessage)
    assert (native.body, native.delivery_tag, native.routing_key) == (b"hi", 7, "k")
    assert (native.headers, native.message_id) == ({"h": "v"}, "m")
    with pytest.raises(AttributeError):
        native.no_such_attribute  # noqa: B018


@pytest.mark.needs_broker("rabbitmq")
async def test_unroutable_sends_fail_between_confirmed_ones(broker: unimq.Broker, dest: str) -> None:
    """A basic.return still wins over the ack behind it while confirms settle in the reader."""
    await broker.ensure(dest)
    routed, nowhere = broker.producer(dest), broker.producer(f"{dest}.nowhere")
    try:
        for i in range(20):
            await routed.send(str(i).encode())
            with pytest.raises(unimq.PublishError) as failure:
                await nowhere.send(b"lost")
            assert isinstance(failure.value.results[0], unimq.NotFound)
        assert (await broker.stats(dest)).depth == 20
    finally:
        await broker.delete(f"{dest}.nowhere")


@pytest.mark.needs_broker("rabbitmq")
async def test_bodies_across_frames_arrive_whole_and_in_order(broker: unimq.Broker, dest: str) -> None:
    """Empty, small and multi-frame bodies (frame_max is 128 KiB) through the inlet, acked, nothing redelivered."""
    await broker.ensure(dest)
    bodies = [b"", b"x", uuid.uuid4().hex.encode() * 20_000, b"tail"]
    producer = broker.producer(dest)
    for body in bodies:
        await producer.send(body, headers={"n": str(len(body))})
    async with broker.consumer(dest, prefetch=10) as consumer:
        got = []
        for _ in bodies:
            delivery = await consumer.receive(timeout=5)
            assert delivery is not None
            got.append(delivery)
            await delivery.ack()
        assert await consumer.receive(timeout=0.3) is None
    assert [d.message.body for d in got] == bodies
    assert [d.message.headers["n"] for d in got] == [str(len(b)) for b in bodies]
    assert [d.native.body for d in got] == bodies, "Delivery.native is aio-pika's message with the same body"
    assert (await broker.stats(dest)).depth == 0


@pytest.mark.needs_broker("rabbitmq")
async def test_competing_consumers_each_ack_their_own(dest: str) -> None:
    """Eight consumers on one queue, each on its own tapped channel: every message once, all acked."""
    async with unimq.connect(URL) as broker:
        try:
            await broker.ensure(dest)
            await broker.producer(dest).send_many([str(i).encode() for i in range(800)])
            seen: list[bytes] = []

            async def drain() -> None:
                async with broker.consumer(dest, prefetch=50) as consumer:
                    while (delivery := await consumer.receive(timeout=0.5)) is not None:
                        seen.append(delivery.message.body)
                        await delivery.ack()

            await asyncio.wait_for(asyncio.gather(*(drain() for _ in range(8))), 30)
            assert sorted(seen) == sorted(str(i).encode() for i in range(800))
            assert (await broker.stats(dest)).depth == 0
        finally:
            await broker.delete(dest)
