"""Consumer lifecycle on every backend: cancellation honoured, loops that end on close, held messages
released at once, polls that return what is waiting, cancelled calls that lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

import unimq
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import bodies, collect, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio


@pytest.mark.requires("persistence")
async def test_cancel_during_a_busy_nack_loop_ends_the_loop(broker: unimq.Broker, names: Names,
                                                            timing: Timing) -> None:
    """20 times: a task nacking the same message as fast as it comes back ends when cancelled."""
    dest, group = await queue(broker, names)
    await broker.producer(dest).send(b"spin")
    async with broker.consumer(dest, group) as consumer:
        first = await consumer.receive(timeout=timing.receive)
        assert first is not None
        await first.nack()

        async def spin() -> None:
            async for delivery in consumer:
                await delivery.nack()

        for repetition in range(20):
            task = asyncio.create_task(spin())
            await asyncio.sleep(0.02)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=timing.receive)
            assert done, f"repetition {repetition}: the loop kept consuming after cancel()"
            assert task.cancelled(), f"repetition {repetition}: the loop ended without CancelledError"


async def test_closing_the_broker_ends_a_loop_in_another_task(unimq_url: str, names: Names,
                                                              broker: unimq.Broker, timing: Timing) -> None:
    dest, group = await queue(broker, names)
    async with asyncio.timeout(timing.receive):
        other = await unimq.connect(unimq_url)
    started = asyncio.Event()

    async def loop() -> int:
        seen = 0
        async with other.consumer(dest, group) as consumer:
            started.set()
            async for delivery in consumer:
                seen += 1
                await delivery.ack()
        return seen

    task = asyncio.create_task(loop())
    await asyncio.wait_for(started.wait(), timing.receive)
    await asyncio.sleep(0.2)
    await other.close()
    done, _ = await asyncio.wait({task}, timeout=timing.receive)
    assert done, "the loop did not end when its broker was closed"
    task.result()  # ends the loop: no exception


@pytest.mark.requires("competing_consumers", "persistence")
async def test_messages_held_at_close_come_back_once(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Consumer A takes 4, acks 1, closes; consumer B gets the other 3, each once, without waiting a lock out."""
    dest, group = await queue(broker, names)
    sent = bodies(4, "held")
    await broker.producer(dest).send_many(sent)
    lock = max(timing.lock * 10, 30.0)
    async with broker.consumer(dest, group, prefetch=4, lock_timeout=lock) as first:
        taken = await collect(first, 4, timing, ack=False)
        assert len(taken) == 4
        await taken[0].ack()
    closed_at = time.monotonic()
    async with broker.consumer(dest, group, lock_timeout=lock) as second:
        again = await collect(second, 3, timing)
        waited = time.monotonic() - closed_at
        extra = await second.receive(timeout=timing.quiet)
    assert sorted(d.message.body for d in again) == sorted(d.message.body for d in taken[1:])
    assert extra is None, f"a message came back twice: {extra.message.body!r}"
    assert waited < lock, f"held messages came back only after {waited:.1f}s (the lock is {lock:g}s)"


async def test_a_consumer_of_a_group_never_ensured_works_or_says_not_found(broker: unimq.Broker, names: Names,
                                                                          timing: Timing) -> None:
    dest, _ = await queue(broker, names)
    group = names.group() if broker.capabilities_for(dest).fanout else None
    try:
        consumer = await broker.consumer(dest, group).open()
    except unimq.NotFound as exc:
        assert (group or dest) in str(exc)
        return
    async with consumer:
        await broker.producer(dest).send(b"to the new group")
        got = await collect(consumer, 1, timing)
        assert [d.message.body for d in got] == [b"to the new group"]


async def test_a_zero_timeout_poll_returns_a_waiting_message(broker: unimq.Broker, names: Names,
                                                             timing: Timing) -> None:
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(b"waiting")
        deadline = time.monotonic() + timing.receive
        got = None
        while got is None and time.monotonic() < deadline:
            got = await consumer.receive(timeout=0)
            if got is None:
                await asyncio.sleep(0.05)
        assert got is not None, "receive(timeout=0) never returned the waiting message"
        await got.ack()


@pytest.mark.requires("persistence")
async def test_a_cancelled_receive_many_loses_nothing(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Cancel receive_many while it holds deliveries: they are not lost and their prefetch room comes back."""
    dest, group = await queue(broker, names)
    await broker.producer(dest).send_many(bodies(2, "many"))
    async with broker.consumer(dest, group, prefetch=2) as consumer:
        for _ in range(3):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(consumer.receive_many(3, timeout=timing.receive), timing.quiet)
        got = await collect(consumer, 2, timing)
    assert sorted(d.message.body for d in got) == bodies(2, "many")
