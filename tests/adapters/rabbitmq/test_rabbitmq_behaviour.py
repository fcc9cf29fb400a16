"""RabbitMQ-specific behaviour: confirms and unroutable messages, attempts, emulated delays and
dead letters, recovery after a dropped connection, and URL options."""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import aio_pika
import aiormq
import pytest
from rabbitmq_support import QUORUM_URL, URL, FaultProxy, with_query
from unimq_rabbitmq import RabbitMQDriver, RabbitMQOptions
from unimq_rabbitmq.mapping import delay_bucket

import unimq
from unimq.reliability import ATTEMPT, DEAD_LETTER_REASON
from unimq.url import parse_url

pytestmark = pytest.mark.needs_broker("rabbitmq")


async def test_unroutable_send_is_an_error_not_a_loss(broker: unimq.Broker, dest: str) -> None:
    """mandatory publishes: with no queue bound, send() raises instead of dropping the message."""
    with pytest.raises(unimq.PublishError) as failure:
        await broker.producer(dest).send(b"nowhere")
    assert isinstance(failure.value.results[0], unimq.NotFound)
    assert "unroutable" in str(failure.value)


async def test_send_many_pipelined_and_ordered(broker: unimq.Broker, dest: str) -> None:
    """2500 messages (three batches) are confirmed and arrive in publish order for one consumer."""
    await broker.ensure(dest)
    bodies = [str(i).encode() for i in range(2500)]
    await broker.producer(dest).send_many(bodies)
    got: list[bytes] = []
    async with broker.consumer(dest, prefetch=500) as consumer:
        while len(got) < len(bodies):
            delivery = await consumer.receive(timeout=5)
            assert delivery is not None, f"only {len(got)} arrived"
            got.append(delivery.message.body)
            await delivery.ack()
    assert got == bodies


async def test_nack_counts_attempts(broker: unimq.Broker, dest: str) -> None:
    """nack redelivers with attempt 1, 2, 3 (quorum: x-delivery-count; classic: republished copy)."""
    await broker.ensure(dest)
    await broker.producer(dest).send(b"again", headers={"h": "v"}, key="k")
    attempts = []
    async with broker.consumer(dest) as consumer:
        for _ in range(3):
            delivery = await consumer.receive(timeout=5)
            assert delivery is not None
            attempts.append(delivery.attempt)
            assert delivery.message.headers == {"h": "v"}, "transport headers stay hidden"
            assert delivery.message.key == "k"
            if len(attempts) < 3:
                await delivery.nack()
            else:
                await delivery.ack()
    assert attempts == [1, 2, 3]


async def test_quorum_attempt_is_the_native_delivery_count(dest: str) -> None:
    """On quorum queues a plain nack is basic.nack(requeue); the broker's count is the attempt."""
    async with unimq.connect(with_query(URL, "queue_type=quorum")) as broker:
        try:
            await broker.ensure(dest)
            await broker.producer(dest).send(b"q")
            async with broker.consumer(dest) as consumer:
                first = await consumer.receive(timeout=5)
                assert first is not None
                await first.nack()
                second = await consumer.receive(timeout=5)
                assert second is not None
                assert second.native.headers.get("x-delivery-count") == 1
                assert ATTEMPT not in (second.native.headers or {}), "no republish on quorum"
                assert second.attempt == 2
                await second.ack()
        finally:
            await broker.delete(dest)


async def test_nack_delay_waits_in_a_ttl_queue(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest)
    await broker.producer(dest).send(b"later")
    async with broker.consumer(dest) as consumer:
        first = await consumer.receive(timeout=5)
        assert first is not None
        started = time.monotonic()
        await first.nack(delay=timedelta(milliseconds=700))
        assert await consumer.receive(timeout=0.4) is None, "redelivered before the delay"
        second = await consumer.receive(timeout=5)
        assert second is not None
        assert time.monotonic() - started >= 0.69
        assert second.attempt == 2
        await second.ack()


async def test_delayed_send_with_ttl(broker: unimq.Broker, dest: str) -> None:
    """A delayed message arrives after its delay; one whose ttl ends during the delay never does."""
    await broker.ensure(dest, groups=("g",))
    producer = broker.producer(dest)
    await producer.send(b"keep", delay=timedelta(milliseconds=500), ttl=timedelta(seconds=30), key="k1")
    await producer.send(b"expire", delay=timedelta(milliseconds=500), ttl=timedelta(milliseconds=100))
    async with broker.consumer(dest, "g") as consumer:
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None and delivery.message.body == b"keep"
        assert delivery.message.key == "k1", "the key survives the delay queue"
        await delivery.ack()
        assert await consumer.receive(timeout=1) is None


async def test_reject_dead_letters_with_reason(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest, groups=("g",))
    sent = await broker.producer(dest).send(b"poison", key="k9", headers={"a": "b"})
    async with broker.consumer(dest, "g") as consumer:
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None
        await delivery.reject("cannot parse")
    async with broker.consumer(broker.dead_letter_destination(dest)) as dlq:
        dead = await dlq.receive(timeout=5)
        assert dead is not None
        await dead.ack()
    assert dead.message.message_id == sent.message_id
    assert dead.message.headers[DEAD_LETTER_REASON] == "cannot parse"
    assert dead.message.headers["a"] == "b"
    assert dead.message.key == "k9"


async def test_max_deliveries_dead_letters(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest, max_deliveries=2)
    await broker.producer(dest).send(b"crashy")
    async with broker.consumer(dest) as consumer:
        for _ in range(2):
            delivery = await consumer.receive(timeout=5)
            assert delivery is not None
            await delivery.nack()
        assert await consumer.receive(timeout=1) is None
    async with broker.consumer(broker.dead_letter_destination(dest)) as dlq:
        dead = await dlq.receive(timeout=5)
        assert dead is not None
        await dead.ack()
    assert DEAD_LETTER_REASON in dead.message.headers


@pytest.mark.parametrize("url", [URL, QUORUM_URL], ids=["classic", "quorum"])
async def test_max_deliveries_is_read_by_a_process_that_did_not_ensure(url: str, dest: str) -> None:
    """The limit lives in the marker queue <dest>.max-deliveries (x-max-length): a fresh Broker that
    never called ensure() dead-letters the poison message after two deliveries, a delayed nack's
    copy counting as a delivery too."""
    async with unimq.connect(url) as broker:
        try:
            await broker.ensure(dest, max_deliveries=2)
            await broker.producer(dest).send(b"poison")
            async with unimq.connect(url) as other:
                async with other.consumer(dest) as consumer:
                    for attempt in (1, 2):
                        delivery = await consumer.receive(timeout=5)
                        assert delivery is not None and delivery.attempt == attempt
                        await delivery.nack(delay=0.05 if attempt == 2 else None)
                    assert await consumer.receive(timeout=1) is None, "delivered past max_deliveries=2"
                async with other.consumer(other.dead_letter_destination(dest)) as dlq:
                    dead = await dlq.receive(timeout=5)
                    assert dead is not None and dead.message.body == b"poison"
                    await dead.ack()
        finally:
            await broker.delete(dest)


async def test_native_dead_letter_reason_is_surfaced(raw: aio_pika.abc.AbstractChannel, dest: str) -> None:
    """A message dead-lettered by RabbitMQ itself (here: expired) shows x-death's reason via unimq."""
    async with unimq.connect(URL) as broker:
        try:
            await broker.ensure(dest)
            dlq = broker.dead_letter_destination(dest)
            source = await raw.declare_queue(f"{dest}.src", arguments={
                "x-dead-letter-exchange": dlq, "x-message-ttl": 1, "x-expires": 60_000})
            await raw.default_exchange.publish(aio_pika.Message(b"old"), routing_key=source.name)
            async with broker.consumer(dlq) as consumer:
                dead = await consumer.receive(timeout=5)
                assert dead is not None
                await dead.ack()
            assert "expired" in dead.message.headers[DEAD_LETTER_REASON]
        finally:
            await broker.delete(dest)


async def test_priority_on_classic_queues(dest: str) -> None:
    async with unimq.connect(URL) as broker:
        try:
            await broker.ensure(dest, max_priority=5)
            assert broker.capabilities_for(dest).priority.limit == 5
            producer = broker.producer(dest)
            for priority in (1, 5, 3):
                await producer.send(str(priority).encode(), priority=priority)
            with pytest.raises(unimq.CapabilityError):
                await producer.send(b"too high", priority=6)
            async with broker.consumer(dest) as consumer:
                got = [await consumer.receive(timeout=5) for _ in range(3)]
            assert [d.message.body for d in got if d] == [b"5", b"3", b"1"]
        finally:
            await broker.delete(dest)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_reconnect_redelivers_unacked_with_higher_attempt(queue_type: str, proxy: FaultProxy,
                                                                dest: str) -> None:
    """A dropped connection loses nothing: the unacked message comes back through the recovered
    channel with a higher attempt, and acking the stale delivery does not raise."""
    query = f"queue_type={queue_type}&reconnect_interval=0.2"
    async with unimq.connect(with_query(URL, f"queue_type={queue_type}")) as broker:
        try:
            await broker.ensure(dest)
            await broker.producer(dest).send(b"survivor")
            flaky_url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?{query}"
            async with unimq.connect(flaky_url) as flaky, flaky.consumer(dest) as consumer:
                first = await consumer.receive(timeout=5)
                assert first is not None and first.attempt == 1
                proxy.sever()
                await asyncio.sleep(0.5)
                await first.ack()  # its channel is gone: no error, the broker redelivers
                second = await consumer.receive(timeout=10)
                assert second is not None, "not redelivered after reconnect"
                assert second.message.body == b"survivor"
                assert second.attempt == 2
                await second.ack()
                await flaky.producer(dest).send(b"after")
                third = await consumer.receive(timeout=5)
                assert third is not None and third.message.body == b"after"
                await third.ack()
        finally:
            await broker.delete(dest)


async def test_reconnect_does_not_hand_out_the_lost_channels_buffered_messages(proxy: FaultProxy, dest: str) -> None:
    """Deliveries the consumer had buffered but not handed out when the connection dropped are
    requeued by the broker: each comes back once, as attempt 2, and is not also handed out from
    the buffer (a duplicate the application would process twice)."""
    bodies = [str(i).encode() for i in range(10)]
    async with unimq.connect(URL) as broker:
        try:
            await broker.ensure(dest)
            await broker.producer(dest).send_many(bodies)
            flaky_url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_interval=0.2"
            async with unimq.connect(flaky_url) as flaky, flaky.consumer(dest, prefetch=10) as consumer:
                await asyncio.sleep(0.5)  # all ten reach the consumer's buffer
                first = await consumer.receive(timeout=5)
                assert first is not None and first.attempt == 1
                proxy.sever()
                await asyncio.sleep(0.5)
                after: list[unimq.Delivery] = []
                while (delivery := await consumer.receive(timeout=3)) is not None:
                    after.append(delivery)
                    await delivery.ack()
            got = Counter(d.message.body for d in after)
            assert got == Counter(bodies), f"after the reconnect: {sorted(got.items())}"
            assert {d.attempt for d in after} == {2}
        finally:
            await broker.delete(dest)


async def test_close_requeues_buffered_messages(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest)
    await broker.producer(dest).send_many([b"1", b"2", b"3"])
    async with broker.consumer(dest, prefetch=3) as consumer:
        first = await consumer.receive(timeout=5)
        assert first is not None
    async with broker.consumer(dest) as consumer:
        got = [await consumer.receive(timeout=5) for _ in range(3)]
    assert sorted(d.message.body for d in got if d) == [b"1", b"2", b"3"]


async def test_coalesced_acks_settle_exactly_what_was_acked(broker: unimq.Broker, dest: str) -> None:
    """Acks go out coalesced (one basic.ack multiple=True below the oldest unsettled tag, single
    acks past it): acking out of order around held and nacked messages settles exactly the acked
    ones, and no ack closes the channel (a wrong multiple-ack would: unknown delivery tag)."""
    await broker.ensure(dest)
    bodies = [str(i).encode() for i in range(20)]
    await broker.producer(dest).send_many(bodies)
    async with broker.consumer(dest, prefetch=20) as consumer:
        got = await consumer.receive_many(20, timeout=5)
        assert [d.message.body for d in got] == bodies
        held, nacked = {3, 11}, 7
        for i in [*range(19, 11, -1), *range(0, 11)]:
            if i not in held and i != nacked:
                await got[i].ack()
            if i == 15:
                await asyncio.sleep(0.05)  # let a flush go out between acks
        await got[nacked].nack()
        again = await consumer.receive(timeout=5)
        assert again is not None and again.message.body == bodies[nacked] and again.attempt == 2
        await again.ack()
    async with broker.consumer(dest) as consumer:
        back = await consumer.receive_many(20, timeout=2)
        assert sorted(d.message.body for d in back) == sorted(bodies[i] for i in held)
        for delivery in back:
            await delivery.ack()


def test_delay_buckets_round_up_to_two_digits() -> None:
    assert [delay_bucket(s) for s in (0.0001, 0.057, 0.1234, 1.0, 12.345)] == [1, 57, 130, 1000, 13000]


@pytest.mark.parametrize(("query", "word"), [
    ("bogus=1", "bogus"),
    ("queue_type=stream", "queue_type"),
    ("queue_type=quorum&max_priority=5", "max_priority"),
    ("ca_file=/x.pem", "amqps"),
])
async def test_bad_options_are_config_errors(query: str, word: str) -> None:
    with pytest.raises(unimq.ConfigError, match=word):
        await unimq.connect(with_query("amqp://guest:guest@127.0.0.1:5672/", query))


async def test_errors_are_classified(dest: str) -> None:
    """Wrong password: AuthenticationError; unreachable: retryable BrokerConnectionError; unknown queue: NotFound."""
    with pytest.raises(unimq.AuthenticationError) as wrong:
        await unimq.connect("amqp://guest:not-the-password@127.0.0.1:5672/?connect_timeout=3")
    assert not wrong.value.retryable
    with pytest.raises(unimq.BrokerConnectionError) as unreachable:
        await unimq.connect("amqp://guest:guest@127.0.0.1:1/?connect_timeout=1")
    assert unreachable.value.retryable
    async with unimq.connect(URL) as broker:
        with pytest.raises(unimq.NotFound):
            await broker.stats(dest)


async def test_password_never_shown() -> None:
    with pytest.raises(unimq.UnimqError) as failure:
        await unimq.connect("amqp://guest:s3cr3t-pw@127.0.0.1:5672/?connect_timeout=3")
    assert "s3cr3t-pw" not in str(failure.value)
    assert "s3cr3t-pw" not in repr(failure.value)


async def test_send_after_connection_loss_waits_for_recovery(proxy: FaultProxy, dest: str) -> None:
    """Sends issued while the connection is down complete once it is restored; none is lost."""
    async with unimq.connect(URL) as broker:
        try:
            await broker.ensure(dest)
            async with unimq.connect(f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_interval=0.2") as flaky:
                producer = flaky.producer(dest)
                await producer.send(b"before")
                proxy.sever()
                await asyncio.gather(*(producer.send(f"during-{i}".encode()) for i in range(20)))
            async with broker.consumer(dest) as consumer:
                got = set()
                while (delivery := await consumer.receive(timeout=3)) is not None:
                    got.add(delivery.message.body)
                    await delivery.ack()
            assert got == {b"before"} | {f"during-{i}".encode() for i in range(20)}
        finally:
            await broker.delete(dest)


def _live_amqp_objects() -> Counter[str]:
    gc.collect()
    kinds = (aio_pika.RobustChannel, aiormq.Channel, aiormq.Connection)
    return Counter(type(obj).__name__ for obj in gc.get_objects() if isinstance(obj, kinds))


async def test_connection_resets_leave_no_channels_behind(proxy: FaultProxy, dest: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconnects replace channels instead of piling them up (aio-pika bugs #490/#496/#658 kept
    closed channels and their callbacks alive): the live channel and connection objects after
    six resets are those after one."""
    for name in ("aio_pika", "aiormq"):  # pytest keeps logged tracebacks, whose frames hold the old connections
        monkeypatch.setattr(logging.getLogger(name), "propagate", False)
    async with unimq.connect(URL) as broker:
        try:
            await broker.ensure(dest)
            flaky_url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_interval=0.1"
            async with unimq.connect(flaky_url) as flaky, flaky.consumer(dest) as consumer:
                producer = flaky.producer(dest)
                counts = []
                for round_trip in range(6):
                    proxy.sever()
                    body = str(round_trip).encode()
                    await producer.send(body)
                    while True:  # an ack cut off by the reset brings back an earlier message first
                        delivery = await consumer.receive(timeout=10)
                        assert delivery is not None, f"round trip {round_trip} not delivered after the reset"
                        await delivery.ack()
                        if delivery.message.body == body:
                            break
                    counts.append(_live_amqp_objects())
            assert counts[-1] == counts[0], counts
        finally:
            await broker.delete(dest)


def test_tls_context_from_options(tmp_path: Path) -> None:
    """amqps options build the SSL context; unreadable files are a ConfigError, not a crash later."""
    url = parse_url("amqps://user:pw@broker.example/")
    insecure = RabbitMQDriver(url, RabbitMQOptions(verify=False))._ssl_context()
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert RabbitMQDriver(url, RabbitMQOptions())._ssl_context().verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(unimq.ConfigError, match="TLS"):
        RabbitMQDriver(url, RabbitMQOptions(ca_file=f"{tmp_path}/missing.pem"))._ssl_context()
