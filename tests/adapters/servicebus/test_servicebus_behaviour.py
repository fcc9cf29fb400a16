"""Service Bus specific behaviour: topics and subscriptions, peek, scheduling, nack delay, secrets, URLs."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from azure.servicebus.aio import ServiceBusClient
from unimq_servicebus.options import ServiceBusOptions, endpoint

import unimq
from unimq.url import parse_options, parse_url


async def test_groups_are_subscriptions_and_topic_dlq_reads_them_all(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name, groups=("billing", "audit"))
    await broker.producer(name).send(b"order")
    for group in ("billing", "audit"):
        async with broker.consumer(name, group) as consumer:
            delivery = await consumer.receive(timeout=10)
            assert delivery is not None and delivery.message.body == b"order"
            await delivery.reject(f"rejected by {group}")
    with pytest.raises(unimq.ConfigError, match="topic"):
        async with broker.consumer(name) as consumer:
            await consumer.receive(timeout=1)
    async with broker.consumer(broker.dead_letter_destination(name)) as consumer:
        reasons = set()
        for _ in range(2):
            delivery = await consumer.receive(timeout=10)
            assert delivery is not None
            reasons.add(delivery.message.headers["x-unimq-dead-letter-reason"])
            await delivery.ack()
    assert reasons == {"rejected by billing", "rejected by audit"}
    assert (await broker.stats(name, "billing")).dead_letter_depth == 0


async def test_peek_sees_scheduled_and_repeats(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    producer = broker.producer(name)
    await producer.send(b"now")
    await producer.send(b"later", delay=timedelta(minutes=5))
    first = [m.body for m in await broker.peek(name, 10)]
    assert sorted(first) == [b"later", b"now"], "peek shows scheduled messages too, as Service Bus does"
    assert [m.body for m in await broker.peek(name, 10)] == first, "every peek starts at the beginning"
    async with broker.consumer(name) as consumer:
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None and delivery.message.body == b"now"
        await delivery.ack()
        assert await consumer.receive(timeout=1) is None, "the scheduled message is not visible yet"


async def test_schedule_is_native(broker: unimq.Broker, sdk: ServiceBusClient, name: str) -> None:
    """delay= is the scheduled enqueue time on the wire, visible to plain clients."""
    await broker.ensure(name)
    before = time.time()
    await broker.producer(name).send(b"x", delay=timedelta(seconds=60))
    async with sdk.get_queue_receiver(name) as receiver:
        [peeked] = await receiver.peek_messages(max_message_count=1, sequence_number=1)
    assert peeked.scheduled_enqueue_time_utc is not None
    assert 55 < peeked.scheduled_enqueue_time_utc.timestamp() - before < 65


async def test_nack_delay_holds_the_lock_then_abandons(broker: unimq.Broker, name: str) -> None:
    """The emulated delayed nack: no copy is sent; the same message returns with the next delivery count."""
    await broker.ensure(name, lock_timeout=timedelta(seconds=5))
    await broker.producer(name).send(b"retry me")
    async with broker.consumer(name) as consumer:
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None
        sequence = delivery.native.sequence_number
        await delivery.nack(delay=timedelta(seconds=6))  # longer than the lock: renewed meanwhile
        nacked = time.monotonic()
        assert (await broker.stats(name)).in_flight == 1
        again = await consumer.receive(timeout=15)
        assert again is not None
        assert time.monotonic() - nacked >= 5.8
        assert again.native.sequence_number == sequence, "the same Service Bus message, not a copy"
        assert again.attempt == 2
        await again.ack()


async def test_close_abandons_unsettled(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    await broker.producer(name).send_many([b"a", b"b"])
    async with broker.consumer(name) as consumer:
        assert len(await consumer.receive_many(2, timeout=10)) == 2
    async with broker.consumer(name) as consumer:
        again = await consumer.receive_many(2, timeout=5)
    assert sorted(d.message.body for d in again) == [b"a", b"b"]
    assert {d.attempt for d in again} == {2}


async def test_ensure_dedup_and_lock_duration(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name, deduplication=timedelta(minutes=1), lock_timeout=timedelta(seconds=7),
                        max_deliveries=3)
    stats = await broker.stats(name)
    assert stats.depth == 0
    producer = broker.producer(name)
    await producer.send(unimq.Message(body=b"1", message_id="same"))
    await producer.send(unimq.Message(body=b"2", message_id="same"))
    await asyncio.sleep(0.2)
    assert (await broker.stats(name)).depth == 1


async def test_partitions_and_fifo_refused(broker: unimq.Broker, name: str) -> None:
    with pytest.raises(unimq.CapabilityError, match="fifo"):
        await broker.ensure(name, fifo=True)
    with pytest.raises(unimq.CapabilityError, match="partitions"):
        await broker.ensure(name, partitions=4)


async def test_groups_on_an_existing_queue_refused(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    with pytest.raises(unimq.ConfigError, match="is a queue"):
        await broker.ensure(name, groups=("g",))


def test_url_modes_and_secrets() -> None:
    def ep(url: str) -> object:
        parsed = parse_url(url)
        return endpoint(parsed, parse_options(ServiceBusOptions, "servicebus", dict(parsed.query)))

    emulator = ep("servicebus://Root:k3y-s3cret@127.0.0.1:5673?emulator=true")
    assert emulator.connection_string == ("Endpoint=sb://127.0.0.1:5673;SharedAccessKeyName=Root;"
                                          "SharedAccessKey=k3y-s3cret;UseDevelopmentEmulator=true")
    assert "k3y-s3cret" not in repr(emulator)
    sas = ep("servicebus://Root:an0ther-s3cret@myns")
    assert sas.namespace == "myns.servicebus.windows.net" and sas.credential is not None
    conn = ep("servicebus://?connection_string=Endpoint%3Dsb%3A%2F%2Fns.servicebus.windows.net%2F%3B"
              "SharedAccessKeyName%3DRoot%3BSharedAccessKey%3Dc0nn-s3cret")
    assert conn.namespace == "ns.servicebus.windows.net" and not conn.emulator
    error = unimq.errors.UnimqError("failed with an0ther-s3cret and c0nn-s3cret and k3y-s3cret")
    assert "s3cret" not in str(error)
    with pytest.raises(unimq.ConfigError, match="no credentials"):
        ep("servicebus://myns.servicebus.windows.net")
    with pytest.raises(unimq.ConfigError, match="bogus"):
        ep("servicebus://a:b@myns?bogus=1")


async def test_receive_and_delete_mode(sb_url: str, name: str) -> None:
    async with unimq.connect(sb_url, receive_mode="receive_and_delete") as broker:
        assert broker.capabilities.dead_letter.support.value == "none"
        await broker.ensure(name)
        await broker.producer(name).send(b"once")
        async with broker.consumer(name) as consumer:
            delivery = await consumer.receive(timeout=10)
            assert delivery is not None
            await delivery.ack()
        assert (await broker.stats(name)).depth == 0
        await broker.delete(name)


async def test_ack_many_completes_every_message(broker: unimq.Broker, name: str) -> None:
    """ack_many settles concurrently; each message is completed once, none comes back."""
    await broker.ensure(name)
    await broker.producer(name).send_many([str(i).encode() for i in range(20)])
    async with broker.consumer(name, prefetch=20) as consumer:
        got = await consumer.receive_many(20, timeout=10)
        while len(got) < 20:
            more = await consumer.receive_many(20 - len(got), timeout=5)
            assert more, "all 20 messages arrive"
            got += more
        await got[0].ack()
        await consumer.ack_many(got)
        stats = await broker.stats(name)
        assert (stats.depth, stats.in_flight) == (0, 0)
        assert await consumer.receive(timeout=1) is None
