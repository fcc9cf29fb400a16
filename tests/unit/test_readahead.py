"""The core's read-ahead buffer (unimq.readahead): hand-out, refill signal, errors, discard; and
Subscription.discard_unread, a driver's way to make the core forget deliveries it holds unread."""

from __future__ import annotations

import asyncio
import time

import pytest

import unimq
from unimq.message import Delivery, Message
from unimq.readahead import ReadAhead


def _deliveries(count: int, start: int = 0) -> list[Delivery]:
    return [Delivery(Message(b"%d" % i), token=i) for i in range(start, start + count)]


async def test_take_hands_out_at_most_max_messages_and_calls_on_room_at_half() -> None:
    rooms: list[int] = []
    ahead = ReadAhead(10, lambda: rooms.append(len(ahead)))
    ahead.extend(_deliveries(10))
    assert ahead.full
    first = await ahead.take(4, 0)
    assert [d.token for d in first] == [0, 1, 2, 3]
    assert rooms == []  # 6 left: more than half
    second = await ahead.take(4, 0)
    assert [d.token for d in second] == [4, 5, 6, 7]
    assert rooms == [2] and not ahead.full
    assert [d.token for d in await ahead.take(100, 0)] == [8, 9]


async def test_take_waits_for_data_up_to_its_timeout() -> None:
    ahead = ReadAhead(10, lambda: None)
    started = time.monotonic()
    assert await ahead.take(5, 0.05) == []
    assert time.monotonic() - started >= 0.04

    async def later() -> None:
        await asyncio.sleep(0.02)
        for delivery in _deliveries(3):
            ahead.append(delivery)
        ahead.notify()

    task = asyncio.create_task(later())
    got = await ahead.take(5, 5.0)
    await task
    assert [d.token for d in got] == [0, 1, 2]


async def test_an_error_is_raised_once_the_buffer_is_drained_and_stays() -> None:
    ahead = ReadAhead(10, lambda: None)
    ahead.extend(_deliveries(2))
    ahead.fail(RuntimeError("fetcher gone"))
    assert len(await ahead.take(5, 0)) == 2
    for _ in range(2):
        with pytest.raises(RuntimeError, match="fetcher gone"):
            await ahead.take(5, 1.0)


async def test_a_waiting_take_wakes_on_fail() -> None:
    ahead = ReadAhead(10, lambda: None)

    async def fail_soon() -> None:
        await asyncio.sleep(0.02)
        ahead.fail(RuntimeError("boom"))

    task = asyncio.create_task(fail_soon())
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"):
        await ahead.take(5, 5.0)
    await task
    assert time.monotonic() - started < 1.0


async def test_discard_keeps_the_order_and_the_fast_append() -> None:
    ahead = ReadAhead(10, lambda: None)
    ahead.extend(_deliveries(6))
    ahead.discard(lambda d: d.token % 2 == 0)
    ahead.append(_deliveries(1, start=9)[0])
    assert [d.token for d in await ahead.take(10, 0)] == [1, 3, 5, 9]


async def test_discard_unread_forgets_what_the_core_holds_unread_and_nothing_handed_out() -> None:
    """The driver's discard_unread reaches the consumer's buffer: dropped deliveries are never
    handed out, the rest keep their order, and what the application holds is untouched."""
    async with unimq.connect("memory://") as broker:
        await broker.ensure("q")
        await broker.producer("q").send_many([b"%d" % i for i in range(6)])
        async with broker.consumer("q", prefetch=10) as consumer:
            held = await consumer.receive(timeout=1)
            assert held is not None and held.message.body == b"0"
            dropped = consumer.subscription.discard_unread(lambda d: int(d.message.body) % 2 == 1)
            assert sorted(d.message.body for d in dropped) == [b"1", b"3", b"5"]
            rest = await consumer.receive_many(10, timeout=0)
            assert [d.message.body for d in rest] == [b"2", b"4"]
            assert consumer.subscription.discard_unread(lambda d: True) == []
            await held.ack()
