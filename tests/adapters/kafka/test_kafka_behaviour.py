"""Kafka-specific behaviour beyond the conformance suite: emulations, start positions, slow handlers, options."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer
from unimq_kafka.subscription import KafkaSubscription

import unimq


async def test_nack_delay_does_not_block_other_messages(broker: unimq.Broker, topic: str) -> None:
    await broker.ensure(topic, partitions=2)
    producer = broker.producer(topic)
    await producer.send(b"slow", key="a")
    async with broker.consumer(topic) as consumer:
        first = await consumer.receive(timeout=15)
        assert first is not None and first.message.body == b"slow"
        await first.nack(delay=2.0)
        nacked_at = time.monotonic()
        await producer.send_many([unimq.Message(body=f"fast-{i}".encode(), key=str(i)) for i in range(5)])
        fast = [await consumer.receive(timeout=15) for _ in range(5)]
        assert all(d is not None and d.message.body.startswith(b"fast") for d in fast)
        assert time.monotonic() - nacked_at < 2.0, "messages behind a delayed redelivery were held up"
        for d in fast:
            assert d is not None
            await d.ack()
        again = await consumer.receive(timeout=15)
        assert again is not None and again.message.body == b"slow"
        assert time.monotonic() - nacked_at >= 1.9
        assert again.attempt == 2
        assert again.message.message_id == first.message.message_id
        await again.ack()


async def test_delayed_send_reaches_every_group_once_when_due(broker: unimq.Broker, topic: str) -> None:
    await broker.ensure(topic, partitions=1, groups=("g1", "g2"))
    async with broker.consumer(topic, "g1") as c1, broker.consumer(topic, "g2") as c2:
        sent_at = time.monotonic()
        await broker.producer(topic).send(b"later", delay=timedelta(seconds=2))
        await broker.producer(topic).send(b"now")

        async def drain(consumer: unimq.Consumer) -> list[tuple[bytes, float]]:
            got: list[tuple[bytes, float]] = []
            while len(got) < 2:
                delivery = await consumer.receive(timeout=10)
                assert delivery is not None, f"{consumer.group} got {got}"
                got.append((delivery.message.body, time.monotonic() - sent_at))
                await delivery.ack()
            assert await consumer.receive(timeout=1.5) is None, "a delayed message arrived twice"
            return got

        for got in await asyncio.gather(drain(c1), drain(c2)):
            assert [b for b, _ in got] == [b"now", b"later"]
            assert got[1][1] >= 1.9


async def test_expired_messages_are_dropped(broker: unimq.Broker, topic: str) -> None:
    await broker.ensure(topic, partitions=1)
    producer = broker.producer(topic)
    await producer.send(b"short", ttl=timedelta(milliseconds=200))
    await producer.send(b"long", ttl=timedelta(minutes=5))
    await asyncio.sleep(0.5)
    async with broker.consumer(topic) as consumer:
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None and delivery.message.body == b"long"
        await delivery.ack()
        assert await consumer.receive(timeout=1) is None


async def test_start_latest_timestamp_and_offset(broker: unimq.Broker, topic: str) -> None:
    await broker.ensure(topic, partitions=1)
    producer = broker.producer(topic)
    await producer.send_many([b"old-0", b"old-1"])
    await asyncio.sleep(0.05)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await producer.send(b"mid")
    async with broker.consumer(topic, "latest", start="latest") as consumer:
        await producer.send(b"new")
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None and delivery.message.body == b"new"
        await delivery.ack()
    async with broker.consumer(topic, "by-time", start=cut) as consumer:
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None and delivery.message.body == b"mid"
    async with broker.consumer(topic, "by-offset", start=1) as consumer:
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None and delivery.message.body == b"old-1"


async def test_slow_handler_keeps_group_membership(kafka_url: str, topic: str) -> None:
    """A handler slower than max_poll_interval must not make the consumer leave its group."""
    async with unimq.connect(kafka_url, max_poll_interval_ms=2000) as broker:
        await broker.ensure(topic, partitions=1, groups=("slow",))
        await broker.producer(topic).send_many([b"a", b"b", b"c"])
        async with broker.consumer(topic, "slow", prefetch=1) as consumer:
            first = await consumer.receive(timeout=10)
            assert first is not None
            await asyncio.sleep(4.5)  # more than twice max_poll_interval, prefetch exhausted
            await first.ack()
            rest: list[bytes] = []
            for _ in range(2):
                delivery = await consumer.receive(timeout=10)
                assert delivery is not None, f"got only {rest}"
                rest.append(delivery.message.body)
                await delivery.ack()
            assert rest == [b"b", b"c"], "a rebalance would have redelivered 'a'"
            subscription = consumer.subscription
            assert isinstance(subscription, KafkaSubscription)
            assert subscription.native.assignment(), "the consumer lost its partitions"
        await asyncio.sleep(0.3)
        stats = await broker.stats(topic, "slow")
        assert stats.lag == 0, stats


def test_bad_options_are_config_errors() -> None:
    async def connect(url: str) -> None:
        async with unimq.connect(url):
            pass

    with pytest.raises(unimq.ConfigError, match="unknown option 'nope'"):
        asyncio.run(connect("kafka://127.0.0.1:9092?nope=1"))
    with pytest.raises(unimq.ConfigError, match="idempotence"):
        asyncio.run(connect("kafka://127.0.0.1:9092?acks=1"))


def test_sasl_password_never_shown() -> None:
    async def connect() -> None:
        async with unimq.connect("kafka://127.0.0.1:1?security_protocol=SASL_PLAINTEXT&sasl_username=u"
                                 "&sasl_password=hunter2secret&request_timeout_ms=1000"):
            pass

    with pytest.raises(unimq.UnimqError) as info:
        asyncio.run(connect())
    assert "hunter2secret" not in str(info.value)
    assert info.value.retryable, "an unreachable broker is a retryable ConnectionError"


async def test_a_topic_is_ready_when_ensure_returns(broker: unimq.Broker, topic: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A new topic's leaders take ~0.1 s to start: ensure() waits for them, so the first sends are
    not answered NotLeaderForPartition (and retried after aiokafka's backoff)."""
    await broker.ensure(topic, partitions=8)
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        await broker.producer(topic).send_many([unimq.Message(body=b"x", key=f"k{i}") for i in range(64)])
    assert not [r for r in caplog.records if "NotLeaderForPartition" in r.getMessage()]


async def test_max_deliveries_is_read_by_a_process_that_did_not_ensure(broker: unimq.Broker, topic: str,
                                                                       kafka_url: str) -> None:
    """ensure(max_deliveries=2) in one Broker; a fresh Broker's consumer dead-letters the poison message
    (the limit travels in the __unimq_meta topic, not in the memory of the process that ensured)."""
    await broker.ensure(topic, partitions=1, max_deliveries=2)
    await broker.producer(topic).send(b"poison")
    async with unimq.connect(kafka_url) as other:
        async with other.consumer(topic) as consumer:
            for attempt in (1, 2):
                delivery = await consumer.receive(timeout=15)
                assert delivery is not None and delivery.attempt == attempt
                await delivery.nack()
            assert await consumer.receive(timeout=2) is None, "delivered past max_deliveries=2"
        async with other.consumer(other.dead_letter_destination(topic)) as dlq:
            dead = await dlq.receive(timeout=15)
            assert dead is not None and dead.message.body == b"poison"
            assert "2 times" in dead.message.headers["x-unimq-dead-letter-reason"]
            await dead.ack()


async def test_a_slow_handler_does_not_hold_up_a_joining_consumer(broker: unimq.Broker, topic: str) -> None:
    """A rebalance waits only for the messages being processed, not for the prefetch queued behind them:
    with a 0.2 s handler and prefetch 100, a second consumer of the group receives within seconds."""
    await broker.ensure(topic, partitions=2, groups=("slow",))
    await broker.producer(topic).send_many([unimq.Message(body=b"x", key=str(i)) for i in range(400)])
    received: dict[str, float] = {}
    started = time.monotonic()

    async def run(name: str) -> None:
        async with broker.consumer(topic, "slow", prefetch=100) as consumer:
            async for delivery in consumer:
                received.setdefault(name, time.monotonic() - started)
                await asyncio.sleep(0.2)
                await delivery.ack()

    first = asyncio.create_task(run("first"))
    while "first" not in received:
        assert time.monotonic() - started < 20, "the first consumer never received"
        await asyncio.sleep(0.05)
    second = asyncio.create_task(run("second"))
    try:
        while "second" not in received:
            assert time.monotonic() - started < 15, f"the second consumer waited for the rebalance: {received}"
            await asyncio.sleep(0.05)
    finally:
        for task in (first, second):
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)


async def _stopped(reader: KafkaSubscription) -> None:
    """Wait (10 s at most) until the reader's aiokafka consumer is stopped."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not reader.native._closed:
        await asyncio.sleep(0.05)
    assert reader.native._closed, "the aiokafka consumer was never stopped"


@pytest.mark.parametrize("step", [1, 2, 3])
async def test_a_cancelled_close_stops_the_poll_task_and_the_client(broker: unimq.Broker, topic: str,
                                                                    step: int) -> None:
    """A task cancelled while its consumer closes (the benchmark cancels its finished consumers)
    still stops the reader: before, its poll task ran on and committed every 100 ms, for ever,
    for a topic deleted since. ``step``: how many loop turns into close() the cancel lands (at 0
    close() has not started: the consumer stays open, and the broker's close closes it)."""
    await broker.ensure(topic)
    await broker.producer(topic).send_many([b"x"] * 10)
    consumer = await broker.consumer(topic).open()
    for _ in range(10):
        delivery = await consumer.receive(timeout=10)
        assert delivery is not None
        await delivery.ack()
    reader = consumer.subscription
    assert isinstance(reader, KafkaSubscription)
    closing = asyncio.create_task(consumer.close())
    for _ in range(step):
        await asyncio.sleep(0)
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    await _stopped(reader)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("unimq-kafka-poll")]


async def test_a_cancelled_open_stops_the_client_it_started(broker: unimq.Broker, topic: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A task cancelled while its consumer joins the group (the benchmark cancels consumers still
    joining once the others have read everything) must stop the aiokafka client it started: before,
    that member stayed in the group, fetching for ever (20,000 log lines for deleted topics in a
    quick benchmark run). The join is held open after the client really started."""
    await broker.ensure(topic)
    started = asyncio.Event()
    real_start = AIOKafkaConsumer.start

    async def start_then_hang(client: AIOKafkaConsumer) -> None:
        await real_start(client)
        started.set()
        await asyncio.sleep(30)  # a join that takes long (other members revoking, a slow coordinator)

    monkeypatch.setattr(AIOKafkaConsumer, "start", start_then_hang)
    consumer = broker.consumer(topic, group="joining")
    reader = consumer.subscription
    assert isinstance(reader, KafkaSubscription)
    opening = asyncio.create_task(consumer.open())
    await asyncio.wait_for(started.wait(), 10)
    opening.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await opening
    await _stopped(reader)
    assert consumer.subscription is not reader
