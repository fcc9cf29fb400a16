"""Request-reply, routing subjects with per-group filters, temporary destinations — on every backend."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import unimq
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import collect_all, expect_nothing, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio

REQUESTS = 200


async def test_concurrent_requests_each_get_their_own_reply(unimq_url: str, broker: unimq.Broker, names: Names,
                                                            timing: Timing) -> None:
    """200 concurrent requests against one responder group: all answered, none dead-lettered or crossed."""
    if names.pool:
        pytest.skip("request() needs a reply destination made at run time; this target's entities are fixed")
    dest, group = await queue(broker, names)
    async with asyncio.timeout(timing.receive):
        requester = await unimq.connect(unimq_url)

    # Subscribed before the first request: on a backend that stores nothing (core NATS) a request
    # sent before the responder's subscription exists is lost, and its caller times out.
    consumer = await broker.consumer(dest, group, prefetch=200).open()

    async def respond() -> None:
        async with consumer:
            async for delivery in consumer:
                await delivery.reply(b"re:" + delivery.message.body)
                await delivery.ack()

    responder = asyncio.create_task(respond())
    try:
        replies = await asyncio.gather(*(
            requester.request(dest, f"q{i}".encode(), timeout=timing.receive * 3) for i in range(REQUESTS)))
        assert [r.body for r in replies] == [f"re:q{i}".encode() for i in range(REQUESTS)]
    finally:
        responder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await responder
        await consumer.close()
        await requester.close()


async def test_a_request_without_a_responder_times_out(broker: unimq.Broker, names: Names) -> None:
    if names.pool:
        pytest.skip("request() needs a reply destination made at run time; this target's entities are fixed")
    dest, _ = await queue(broker, names)
    with pytest.raises(unimq.Timeout):
        await broker.request(dest, b"anyone?", timeout=0.5)


@pytest.mark.requires("fanout", "routing", "persistence")
async def test_groups_with_subject_patterns_get_exactly_their_share(broker: unimq.Broker, names: Names,
                                                                    timing: Timing) -> None:
    dest = names.dest
    eu, created = names.group(), names.group()
    await broker.ensure(dest, groups=(eu, created))
    subjects = ["orders.eu.created", "orders.us.created", "orders.eu.paid", "billing.eu.created"]
    producer = broker.producer(dest)
    for subject in subjects:
        await producer.send(subject.encode(), subject=subject)
    async with broker.consumer(dest, eu, subject="orders.eu.*") as a, \
            broker.consumer(dest, created, subject="#.created", headers={}) as b:
        await collect_all(a, [b"orders.eu.created", b"orders.eu.paid"], timing)
        await collect_all(b, [b"orders.eu.created", b"orders.us.created", b"billing.eu.created"], timing)
        await expect_nothing(a, timing, "group 'orders.eu.*' must not get other subjects")


@pytest.mark.requires("routing", "persistence")
async def test_header_filters(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    dest, group = await queue(broker, names)
    await broker.producer(dest).send_many([
        unimq.Message(b"refund", headers={"type": "refund"}), unimq.Message(b"sale", headers={"type": "sale"})])
    async with broker.consumer(dest, group, headers={"type": "refund"}) as consumer:
        await collect_all(consumer, [b"refund"], timing)
        await expect_nothing(consumer, timing, "a header filter must drop other values")


async def test_bad_patterns_and_replies_are_config_errors(broker: unimq.Broker, names: Names,
                                                          timing: Timing) -> None:
    with pytest.raises(unimq.ConfigError, match="'!'"):
        broker.consumer(names.dest, subject="orders.!")
    with pytest.raises(unimq.ConfigError):
        await broker.producer(names.dest).send(b"x", subject="orders.*")
    if not broker.capabilities_for(names.dest).persistence:
        return  # the rest sends before a consumer exists: nothing would wait for it here
    dest, group = await queue(broker, names)
    await broker.producer(dest).send(b"no reply_to")
    async with broker.consumer(dest, group) as consumer:
        got = await consumer.receive(timeout=timing.receive)
        assert got is not None
        with pytest.raises(unimq.ConfigError, match="reply_to"):
            await got.reply(b"nowhere")
        await got.ack()


@pytest.mark.requires("temporary", "persistence")
async def test_a_temporary_destination_is_gone_after_its_block(broker: unimq.Broker, names: Names,
                                                               timing: Timing) -> None:
    if names.pool:
        pytest.skip("this target cannot make destinations at run time")
    async with broker.temporary() as name:
        await broker.producer(name).send(b"scratch")
        async with broker.consumer(name) as consumer:
            got = await consumer.receive(timeout=timing.receive)
            assert got is not None and got.message.body == b"scratch"
            await got.ack()
    if broker.capabilities.listing:
        assert name not in await broker.destinations()


async def test_temporary_in_ensure_only_where_the_broker_removes_it(broker: unimq.Broker, names: Names) -> None:
    """ensure(temporary=True) is accepted only where the 'temporary' capability is native."""
    dest = names()
    if not broker.capabilities_for(dest).temporary.is_native:
        with pytest.raises(unimq.CapabilityError, match="temporary"):
            await broker.ensure(dest, temporary=True)
        return
    if names.pool:
        pytest.skip("entities on this target are declared up front; ensure() cannot change them")
    await broker.ensure(dest, temporary=True)
    await broker.delete(dest)
