"""Native routing on RabbitMQ: the subject is the routing key, and a consumer with ``subject=``
binds its group's queue with the pattern instead of ``#``, so the broker never enqueues what the
group does not want. Depths are read with plain aiormq (a passive queue.declare: aio-pika's robust
channel answers a passive declare of a queue it declared before from its cache)."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from rabbitmq_support import QUORUM_URL, URL
from unimq_rabbitmq.mapping import KEY

import unimq

pytestmark = pytest.mark.needs_broker("rabbitmq")

SUBJECTS = ("orders.eu.created", "orders.eu.paid", "billing.us.created")


async def depth(raw: aio_pika.abc.AbstractChannel, queue: str, expected: int) -> int:
    """The queue's ready messages, polled (≤ 5 s) until it is ``expected``: quorum counts may trail a confirm."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        declared = await (await raw.get_underlay_channel()).queue_declare(queue, passive=True)
        count = declared.message_count or 0
        if count == expected or asyncio.get_running_loop().time() > deadline:
            return count
        await asyncio.sleep(0.1)


async def narrow(broker: unimq.Broker, dest: str, group: str | None, subject: str | None) -> None:
    """Open and close a consumer of ``group``: the binding it leaves is what the test checks."""
    async with broker.consumer(dest, group, subject=subject):
        pass


async def send_all(broker: unimq.Broker, dest: str) -> None:
    producer = broker.producer(dest)
    for subject in SUBJECTS:
        await producer.send(subject.encode(), subject=subject)
    await producer.send(b"no subject", key="customer-7")


async def test_the_subject_is_the_routing_key_and_the_key_round_trips(
        broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel, dest: str) -> None:
    await broker.ensure(dest, groups=("eu",))
    native = await raw.declare_queue(exclusive=True)
    await native.bind(dest, "orders.eu.#")
    await broker.producer(dest).send(b"x", subject="orders.eu.created", key="customer-7")
    async with asyncio.timeout(5):
        incoming = await native.get(timeout=5, fail=True)
    assert incoming is not None
    assert incoming.routing_key == "orders.eu.created"
    assert (incoming.headers or {}).get(KEY) == "customer-7"
    await incoming.ack()
    async with broker.consumer(dest, "eu") as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None
        assert got.message.key == "customer-7" and got.message.subject == "orders.eu.created"
        assert KEY not in got.message.headers
        await got.ack()


async def test_a_subject_consumer_keeps_other_messages_out_of_its_group_queue(
        broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel, dest: str) -> None:
    """After a consumer with ``orders.*.created`` opened, only the matching message is enqueued for
    its group (the default group, bound ``#``, still gets all four); ensure() again keeps it narrow."""
    await broker.ensure(dest, groups=("eu",))
    await narrow(broker, dest, "eu", "orders.*.created")
    await broker.ensure(dest, groups=("eu",))
    await send_all(broker, dest)
    assert await depth(raw, f"{dest}.eu", 1) == 1
    assert await depth(raw, dest, 4) == 4
    async with broker.consumer(dest, "eu", subject="orders.*.created") as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None and got.message.body == b"orders.eu.created"
        await got.ack()


async def test_patterns_of_one_group_add_up_and_a_consumer_without_subject_restores_all(
        broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel, dest: str) -> None:
    await broker.ensure(dest, groups=("g",))
    await narrow(broker, dest, "g", "orders.eu.*")
    await narrow(broker, dest, "g", "billing.#")
    await send_all(broker, dest)
    assert await depth(raw, f"{dest}.g", 3) == 3, "the union of both patterns"
    await narrow(broker, dest, "g", None)
    await send_all(broker, dest)
    assert await depth(raw, f"{dest}.g", 7) == 7, "'#' is bound again: all four more"


async def test_the_default_group_narrows_too(broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel,
                                             dest: str) -> None:
    await broker.ensure(dest, groups=("all",))
    await narrow(broker, dest, None, "billing.*.created")
    await send_all(broker, dest)
    assert await depth(raw, dest, 1) == 1
    assert await depth(raw, f"{dest}.all", 4) == 4


async def test_a_subject_of_hash_keeps_the_catch_all(broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel,
                                                     dest: str) -> None:
    await broker.ensure(dest, groups=("g",))
    await narrow(broker, dest, "g", "#")
    await send_all(broker, dest)
    assert await depth(raw, f"{dest}.g", 4) == 4


async def test_a_delayed_send_reaches_a_narrowed_group(broker: unimq.Broker, dest: str) -> None:
    """Delayed sends come back with the delay queue's name as routing key: narrowed groups bind it too."""
    await broker.ensure(dest, groups=("eu",))
    async with broker.consumer(dest, "eu", subject="orders.eu.*") as consumer:
        producer = broker.producer(dest)
        await producer.send(b"later", subject="orders.eu.paid", delay=0.3)
        await producer.send(b"other", subject="orders.us.paid", delay=0.3)
        got = await consumer.receive(timeout=5)
        assert got is not None and got.message.body == b"later"
        assert got.message.subject == "orders.eu.paid"
        await got.ack()
        assert await consumer.receive(timeout=1) is None


async def test_a_subject_no_group_matches_is_unroutable(broker: unimq.Broker, dest: str) -> None:
    """With every queue narrowed, a message no pattern matches is returned: send() raises, as with no queue."""
    await narrow(broker, dest, "eu", "orders.eu.*")
    with pytest.raises(unimq.PublishError) as failure:
        await broker.producer(dest).send(b"x", subject="orders.us.created")
    assert isinstance(failure.value.results[0], unimq.NotFound)
    await broker.producer(dest).send(b"y", subject="orders.eu.created")


async def test_ensure_elsewhere_widens_the_group_until_a_consumer_reopens(
        request: pytest.FixtureRequest, broker: unimq.Broker, raw: aio_pika.abc.AbstractChannel, dest: str) -> None:
    """Another process cannot see the narrowing: its ensure() binds '#' again. The core still
    filters what that lets in, and the group's next consumer narrows it again."""
    await broker.ensure(dest, groups=("eu",))
    await narrow(broker, dest, "eu", "orders.eu.*")
    async with unimq.connect(URL if request.node.callspec.params["broker"] == "classic" else QUORUM_URL) as elsewhere:
        await elsewhere.ensure(dest, groups=("eu",))
    await send_all(broker, dest)
    assert await depth(raw, f"{dest}.eu", 4) == 4
    async with broker.consumer(dest, "eu", subject="orders.eu.*") as consumer:
        got = []
        for _ in range(2):
            delivery = await consumer.receive(timeout=5)
            assert delivery is not None
            got.append(delivery.message.body)
            await delivery.ack()
        assert sorted(got) == [b"orders.eu.created", b"orders.eu.paid"]
        assert await consumer.receive(timeout=0.5) is None
    await send_all(broker, dest)
    assert await depth(raw, f"{dest}.eu", 2) == 2, "narrowed again: only the two matching"
