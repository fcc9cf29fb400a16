"""Acknowledgement: nack, delayed nack, reject to the dead-letter destination, locks and their expiry."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

import unimq
from unimq.reliability import DEAD_LETTER_REASON
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import collect_all, dead_letters, describe, expect_nothing, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio


@pytest.mark.requires("persistence")
async def test_nack_redelivers_with_next_attempt(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send_many([b"nack-1", b"nack-2"])
        first = [await consumer.receive(timeout=timing.receive) for _ in range(2)]
        assert all(first), "the messages never arrived"
        for delivery in first:
            assert delivery is not None
            assert delivery.attempt == 1, f"a first delivery has attempt 1: {describe(delivery)}"
            await delivery.nack()
        again = await collect_all(consumer, [b"nack-1", b"nack-2"], timing)
    assert sorted(d.attempt for d in again) == [2, 2], [describe(d) for d in again]


@pytest.mark.requires("nack_delay")
async def test_nack_with_delay_waits(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(b"later")
        delivery = await consumer.receive(timeout=timing.receive)
        assert delivery is not None, "the message never arrived"
        nacked_at = time.monotonic()  # the delay runs from the call: a first redelivery may wait for metadata
        await delivery.nack(delay=timedelta(seconds=timing.delay))
        again = await consumer.receive(timeout=timing.delay + timing.receive)
        waited = time.monotonic() - nacked_at
    assert again is not None, "a message nacked with a delay never came back"
    assert again.message.body == b"later"
    assert waited >= timing.delay - timing.early, f"redelivered after {waited:.2f}s, before the {timing.delay:g}s delay"
    assert again.attempt == 2


@pytest.mark.requires("dead_letter")
async def test_reject_moves_to_dead_letter_destination(broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                                        timing: Timing) -> None:
    dest, group = await queue(broker, names)
    headers = {"origin": "conformance"} if caps.headers else None
    async with broker.consumer(dest, group) as consumer:
        sent = await broker.producer(dest).send(b"poison", headers=headers)
        delivery = await consumer.receive(timeout=timing.receive)
        assert delivery is not None, "the message never arrived"
        await delivery.reject(reason="cannot parse: test reason")
        await expect_nothing(consumer, timing, "a rejected message must not be redelivered")
    [dead] = await dead_letters(broker, dest, 1, timing)
    assert dead.message.body == b"poison"
    assert dead.message.message_id == sent.message_id
    assert "cannot parse: test reason" in dead.message.headers.get(DEAD_LETTER_REASON, ""), dead.message.headers
    if headers:
        assert dead.message.headers.get("origin") == "conformance", "dead-lettering kept the application headers"


async def test_double_ack_is_harmless(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """A second ack, or a nack after an ack, does nothing: no error, no redelivery."""
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send_many([b"a", b"b"])
        got = await collect_all(consumer, [b"a", b"b"], timing)  # acks each once
        for delivery in got:
            await delivery.ack()
            await delivery.nack()
        await expect_nothing(consumer, timing, "an acked message came back after a second ack/nack")


@pytest.mark.requires("lock_extension", "lock_timeout")
async def test_unacked_message_redelivered_after_lock_timeout(broker: unimq.Broker, names: Names,
                                                              timing: Timing) -> None:
    """Not before the lock expires, then with the next attempt; a late ack of the lost lock does not raise.

    Gated on ``lock_extension``: backends without extensible locks (RabbitMQ, Kafka) have no lock
    to expire and redeliver only on close or disconnect (test_close_with_unacked_messages_redelivers).
    """
    lock = timedelta(seconds=timing.lock)
    dest, group = await queue(broker, names, lock_timeout=lock)
    async with broker.consumer(dest, group, lock_timeout=lock) as consumer:
        await broker.producer(dest).send(b"locked")
        first = await consumer.receive(timeout=timing.receive)
        assert first is not None, "the message never arrived"
        received_at = time.monotonic()
        again = await consumer.receive(timeout=timing.lock + timing.receive)
        waited = time.monotonic() - received_at
        assert again is not None, f"not redelivered within {timing.lock + timing.receive:g}s of a {timing.lock:g}s lock"
        assert again.message.message_id == first.message.message_id
        assert waited >= timing.lock - timing.early, f"redelivered after {waited:.2f}s, before the lock expired"
        assert again.attempt == first.attempt + 1
        await again.ack()
        await first.ack()  # its lock is lost: must not raise
        await expect_nothing(consumer, timing, "an acked message came back")


@pytest.mark.requires("lock_extension", "lock_timeout")
async def test_extend_prevents_redelivery(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    lock = timedelta(seconds=timing.lock)
    dest, group = await queue(broker, names, lock_timeout=lock)
    async with broker.consumer(dest, group, lock_timeout=lock) as consumer:
        await broker.producer(dest).send(b"long job")
        delivery = await consumer.receive(timeout=timing.receive)
        assert delivery is not None, "the message never arrived"
        received_at = time.monotonic()
        for at in (0.5, 1.0):  # extend twice, as a long handler would
            await asyncio.sleep(max(0.0, received_at + at * timing.lock - time.monotonic()))
            await delivery.extend(lock)
        # The original lock expired at 1.0 × lock; watch until 1.6 × lock.
        early = await consumer.receive(timeout=max(0.0, received_at + 1.6 * timing.lock - time.monotonic()))
        assert early is None, f"redelivered despite extend(): {describe(early)}"
        await delivery.ack()
        await expect_nothing(consumer, timing, "an acked message came back")


@pytest.mark.requires("dead_letter")
async def test_max_deliveries_dead_letters(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """ensure(max_deliveries=2): after two unsuccessful deliveries the message goes to the dead-letter destination."""
    try:
        dest, group = await queue(broker, names, max_deliveries=2)
    except unimq.CapabilityError as exc:
        pytest.skip(f"ensure(max_deliveries=) refused: {exc}")
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(b"twice")
        for attempt in (1, 2):
            delivery = await consumer.receive(timeout=timing.receive)
            assert delivery is not None, f"delivery {attempt} never came"
            assert delivery.attempt == attempt
            await delivery.nack()
        await expect_nothing(consumer, timing, "delivered a third time despite max_deliveries=2")
    [dead] = await dead_letters(broker, dest, 1, timing)
    assert dead.message.body == b"twice"
    assert dead.message.headers.get(DEAD_LETTER_REASON), "the dead-letter reason header is missing"
