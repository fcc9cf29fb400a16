"""Sessions: key → session id, per-key order with competing consumers, interop with the plain SDK's
session receivers, unkeyed sends, extend() on the session lock, connection resets mid-session.

Run against a double with this repository's fixes (``scripts/brokers up servicebus`` restarted, or
a private one through UNIMQ_TEST_SERVICEBUS_URL)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from datetime import timedelta

import pytest
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from unimq_servicebus.admin import EntityOptions

import unimq
from unimq.testing.faultproxy import FaultProxy

LOCK = timedelta(seconds=5)


def _keyed(keys: int, per_key: int) -> list[unimq.Message]:
    """Interleaved: k0:0, k1:0, …, k0:1, …"""
    return [unimq.Message(body=f"{k}:{i}".encode(), key=f"k{k}") for i in range(per_key) for k in range(keys)]


def _in_order(processed: list[tuple[int, int]]) -> None:
    """Per key, first deliveries in send order (redeliveries may repeat a message, never skip back)."""
    firsts: dict[int, list[int]] = defaultdict(list)
    for key, seq in processed:
        if seq not in firsts[key]:
            firsts[key].append(seq)
    for key, seqs in firsts.items():
        assert seqs == sorted(seqs), f"k{key} out of order: {seqs}"


async def test_per_key_order_with_competing_consumers(sb_url: str, name: str) -> None:
    """Three consumers holding two sessions each share six keys; each key is processed in order."""
    async with unimq.connect(sb_url + "&sessions=true&max_sessions=2") as broker:
        await broker.ensure(name, lock_timeout=LOCK)
        assert broker.capabilities_for(name).ordering == "per_key"
        await broker.producer(name).send_many(_keyed(6, 20))
        processed: list[tuple[int, int]] = []
        by_consumer: dict[int, set[int]] = defaultdict(set)

        async def work(index: int, consumer: unimq.Consumer) -> None:
            while len({p for p in processed}) < 120:
                delivery = await consumer.receive(timeout=0.2)
                if delivery is None:
                    continue
                key, seq = map(int, delivery.message.body.decode().split(":"))
                assert delivery.message.key == f"k{key}"
                processed.append((key, seq))
                by_consumer[index].add(key)
                await asyncio.sleep(random.uniform(0, 0.01))
                await delivery.ack()

        consumers = [broker.consumer(name, prefetch=10) for _ in range(3)]
        try:
            for consumer in consumers:
                await consumer.open()
            await asyncio.wait_for(asyncio.gather(*(work(i, c) for i, c in enumerate(consumers))), 60)
        finally:
            for consumer in consumers:
                await consumer.close()
        _in_order(processed)
        assert len(by_consumer) >= 2, f"one consumer took every session: {dict(by_consumer)}"
        await broker.delete(name)


async def test_session_entity_made_outside_unimq_interop(broker: unimq.Broker, sdk: ServiceBusClient,
                                                         name: str) -> None:
    """A queue created with requires_session (not by ensure): detected without ?sessions=true; keys
    become session ids the plain SDK's session receivers read, and their session ids read back as keys."""
    await broker._driver._a("create").create_queue(name, EntityOptions(requires_session=True))  # type: ignore[attr-defined]
    await broker.producer(name).send(b"from unimq", key="customer-1")
    assert broker.capabilities_for(name).ordering == "per_key"
    async with sdk.get_queue_receiver(name, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=10) as receiver:
        assert receiver.session.session_id == "customer-1"
        [got] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
        assert (b"".join(got.body), got.session_id) == (b"from unimq", "customer-1")
        await receiver.complete_message(got)
    async with sdk.get_queue_sender(name) as sender:
        await sender.send_messages([ServiceBusMessage(f"sdk {i}", session_id="s-9") for i in range(3)])
    async with broker.consumer(name) as consumer:
        got_back = [await consumer.receive(timeout=10) for _ in range(3)]
        assert [(d.message.body, d.message.key) for d in got_back if d] == [
            (f"sdk {i}".encode(), "s-9") for i in range(3)]
        for delivery in got_back:
            assert delivery is not None
            await delivery.ack()


async def test_unkeyed_messages_default_session_or_refused(sb_url: str, sdk: ServiceBusClient, name: str) -> None:
    """Unkeyed sends go to the session default_session_id (read back as no key); with it empty they
    are refused, per message, with an error naming the fix."""
    async with unimq.connect(sb_url + "&sessions=true") as broker:
        await broker.ensure(name)
        await broker.producer(name).send(b"no key")
        async with sdk.get_queue_receiver(name, session_id="unimq-default", max_wait_time=5) as receiver:
            [peeked] = await receiver.peek_messages(max_message_count=1)
            assert peeked.session_id == "unimq-default"
        async with broker.consumer(name) as consumer:
            delivery = await consumer.receive(timeout=10)
            assert delivery is not None and delivery.message.key is None
            await delivery.ack()
    async with unimq.connect(sb_url + "&default_session_id=") as strict:
        producer = strict.producer(name, retry=None)
        with pytest.raises(unimq.PublishError, match="no key: send it with key="):
            await producer.send(b"no key")
        with pytest.raises(unimq.PublishError) as failed:
            await producer.send_many([unimq.Message(body=b"a", key="k"), b"b"])
        assert failed.value.results[0] is None
        assert isinstance(failed.value.results[1], unimq.ConfigError)
        await strict.delete(name)


async def test_existing_queue_without_sessions_refused(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    with pytest.raises(unimq.ConfigError, match="cannot turn requires_session on"):
        await broker.ensure(name, sessions=True)


async def test_extend_renews_the_session_lock_and_a_busy_session_outlives_it(broker: unimq.Broker,
                                                                             name: str) -> None:
    await broker.ensure(name, sessions=True, lock_timeout=LOCK)
    producer = broker.producer(name)
    async with broker.consumer(name) as holder, broker.consumer(name) as other:
        await producer.send(b"long job", key="a")
        delivery = await holder.receive(timeout=10)
        assert delivery is not None
        received = time.monotonic()
        for at in (0.5, 1.0, 1.5):  # past three lock durations
            await asyncio.sleep(max(0.0, received + at * LOCK.total_seconds() - time.monotonic()))
            await delivery.extend(LOCK)
            assert await other.receive(timeout=0.1) is None, "the session went to another consumer"
        await delivery.ack()
    # A session whose messages keep coming for longer than its lock: renewed, nothing redelivered.
    async with broker.consumer(name) as solo:
        attempts = []
        for i in range(16):
            await producer.send(str(i).encode(), key="b")
            got = await solo.receive(timeout=10)
            assert got is not None and got.message.body == str(i).encode()
            attempts.append(got.attempt)
            await got.ack()
            await asyncio.sleep(0.4)
        assert attempts == [1] * 16


async def test_nack_and_reject_on_a_session(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name, sessions=True, max_deliveries=3)
    await broker.producer(name).send_many([unimq.Message(body=str(i).encode(), key="k") for i in range(3)])
    async with broker.consumer(name) as consumer:
        first = await consumer.receive(timeout=10)
        assert first is not None and first.message.body == b"0"
        await first.nack()
        again = [await consumer.receive(timeout=10) for _ in range(3)]
        bodies = {d.message.body: d for d in again if d is not None}
        assert sorted(bodies) == [b"0", b"1", b"2"]
        assert bodies[b"0"].attempt == 2, "the nacked message comes back with the next attempt"
        for body, delivery in bodies.items():
            await (delivery.reject(reason="bad") if body == b"2" else delivery.ack())
    async with broker.consumer(broker.dead_letter_destination(name)) as dead:
        dlq = await dead.receive(timeout=10)
        assert dlq is not None and (dlq.message.body, dlq.message.key) == (b"2", "k")
        await dlq.ack()


async def test_reset_mid_session_loses_nothing_and_keeps_order(broker: unimq.Broker, sb_url: str,
                                                               name: str) -> None:
    await broker.ensure(name, sessions=True, lock_timeout=LOCK)
    await broker.producer(name).send_many(_keyed(4, 40))
    processed: list[tuple[int, int]] = []
    done: set[tuple[int, int]] = set()

    async def handle(delivery: unimq.Delivery) -> None:
        key, seq = map(int, delivery.message.body.decode().split(":"))
        processed.append((key, seq))
        await asyncio.sleep(0.02)
        done.add((key, seq))

    async with FaultProxy.for_url(sb_url) as proxy, unimq.connect(proxy.url(sb_url)) as flaky:
        stop = asyncio.Event()
        consumer = asyncio.create_task(flaky.consume(name, handle, concurrency=1, stop=stop))
        try:
            for _ in range(3):
                await asyncio.sleep(1.0)
                await proxy.reset_all()
            deadline = time.monotonic() + 45
            while len(done) < 160 and not consumer.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert not consumer.done(), "consume() ended during the resets"
        finally:
            stop.set()
            await asyncio.wait_for(consumer, 20)
    assert len(done) == 160, f"{160 - len(done)} never processed"
    _in_order(processed)
