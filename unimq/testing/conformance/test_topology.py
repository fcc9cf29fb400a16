"""Topology: fan-out to groups, competing consumers in a group, isolated destinations, replay."""

from __future__ import annotations

import asyncio
import warnings

import pytest

import unimq
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import bodies, collect_all, expect_nothing, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio


@pytest.mark.requires("fanout", "persistence")
async def test_each_group_gets_everything(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    dest, groups = names.dest, (names.group(), names.group())
    await broker.ensure(dest, groups=groups)
    sent = bodies(30, "fanout")
    await broker.producer(dest).send_many(sent)
    for group in groups:
        async with broker.consumer(dest, group) as consumer:
            await collect_all(consumer, sent, timing)


@pytest.mark.requires("competing_consumers")
async def test_consumers_in_a_group_split_the_stream(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Two consumers of one group: together they get every message (no loss); each should get some."""
    dest, group = await queue(broker, names)
    sent = set(bodies(100, "split"))
    seen: list[set[bytes]] = [set(), set()]

    async def work(consumer: unimq.Consumer, mine: set[bytes]) -> None:
        while seen[0] | seen[1] != sent:
            delivery = await consumer.receive(timeout=0.2)
            if delivery is not None:
                assert delivery.message.body in sent, f"foreign message {delivery.message.body!r}"
                mine.add(delivery.message.body)
                await asyncio.sleep(0.005)  # a little work, so that the other consumer gets a share
                await delivery.ack()

    async with broker.consumer(dest, group, prefetch=5) as one, broker.consumer(dest, group, prefetch=5) as two:
        await broker.producer(dest).send_many(sorted(sent))
        workers = asyncio.gather(work(one, seen[0]), work(two, seen[1]))
        try:
            await asyncio.wait_for(workers, timing.receive * 2)
        except TimeoutError:
            missing = sent - seen[0] - seen[1]
            pytest.fail(f"{len(missing)} of {len(sent)} messages never arrived at either consumer")
    if not seen[0] or not seen[1]:
        warnings.warn(f"one consumer got all {len(sent)} messages: the group did not spread the load "
                      "(allowed, e.g. one partition, but worth knowing)", stacklevel=1)


async def test_destinations_are_isolated(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Three destinations used at once, each consumer gets exactly its own destination's messages."""
    dests = [names.dest, names(), names()]

    async def one(index: int, dest: str) -> None:
        _, group = await queue(broker, names, dest)
        sent = bodies(20, f"iso{index}")
        async with broker.consumer(dest, group) as consumer:
            await broker.producer(dest).send_many(sent)
            await collect_all(consumer, sent, timing)
            await expect_nothing(consumer, timing, f"{dest} got a message sent to another destination")

    await asyncio.gather(*(one(i, d) for i, d in enumerate(dests)))


@pytest.mark.requires("replay", "fanout")
async def test_new_group_replays_from_earliest(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """A group created after the messages were sent reads them all with start='earliest'."""
    dest = names.dest
    await broker.ensure(dest)
    sent = bodies(10, "history")
    await broker.producer(dest).send_many(sent)
    async with broker.consumer(dest, names.group(), start="earliest") as consumer:
        await collect_all(consumer, sent, timing)


@pytest.mark.requires("replay", "fanout")
async def test_new_group_from_latest_skips_history(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """start='latest': a new group gets only what is sent after it opened."""
    dest = names.dest
    await broker.ensure(dest)
    await broker.producer(dest).send_many(bodies(5, "old"))
    async with broker.consumer(dest, names.group(), start="latest") as consumer:
        new = bodies(5, "new")
        await broker.producer(dest).send_many(new)
        await collect_all(consumer, new, timing)  # fails on any "old" message
        await expect_nothing(consumer, timing, "start='latest' must not replay history")


@pytest.mark.requires("competing_consumers")
async def test_a_message_in_flight_is_not_given_to_another_consumer(broker: unimq.Broker, names: Names,
                                                                    timing: Timing) -> None:
    """While one consumer holds a message unsettled, a second consumer of the group does not get it."""
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group, lock_timeout=timing.receive * 3) as first:
        await broker.producer(dest).send(b"held")
        held = await first.receive(timeout=timing.receive)
        assert held is not None, "the message never arrived"
        async with broker.consumer(dest, group, lock_timeout=timing.receive * 3) as second:
            await expect_nothing(second, timing, "a message held by one consumer went to another")
        await held.ack()
