"""AutoDeleteOnIdle in the double: an entity with ``auto_delete_on_idle`` deletes itself once idle
that long (no send, receive, settlement, open receiver link, scheduled message or management
operation); an entity without it is never deleted. Broker-level tests pass the clock in; the wire
tests drive a private double with the real SDK."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from unimq_servicebus.testing.double import ServiceBusDouble
from unimq_servicebus.testing.double.codec import StoredMessage, now_ms
from unimq_servicebus.testing.double.entities import Broker, ServiceBusError

YEAR_MS = 365 * 86_400_000


class _Receiver:
    """Stands in for a receiving link without credit: attached, but nothing is delivered to it."""

    peek_lock = True
    session_id = None

    def credit(self) -> int:
        return 0

    def after_pump(self) -> None:
        """Nothing to flush."""


def names(broker: Broker) -> set[str]:
    return {entity["name"] for entity in broker.list()}


def test_an_idle_queue_is_deleted_once_idle_that_long() -> None:
    broker = Broker()
    queue = broker.create_queue("q", auto_delete_on_idle=1.0)
    start = now_ms()  # after the creation: its dead-letter queue was last active then, on the real clock
    queue.touch(start)
    broker.tick(start + 999)
    assert "q" in names(broker)
    broker.tick(start + 1000)
    assert "q" not in names(broker)
    with pytest.raises(ServiceBusError):
        broker.stats("q")


def test_entities_without_the_option_are_never_deleted() -> None:
    broker = Broker()
    broker.create_queue("q")
    broker.create_subscription("t", "s")
    broker.tick(now_ms() + 10 * YEAR_MS)
    assert names(broker) == {"q", "t", "t/Subscriptions/s"}


def test_a_send_restarts_the_idle_clock() -> None:
    broker = Broker()
    start = now_ms()
    queue = broker.create_queue("q", auto_delete_on_idle=1.0)
    queue.touch(start)
    queue.enqueue(StoredMessage([]), start + 800)
    broker.tick(start + 1500)
    assert "q" in names(broker), "deleted 0.7 s after a send"
    broker.tick(start + 1800)
    assert "q" not in names(broker)


def test_an_open_receiver_keeps_it_and_the_clock_starts_when_it_detaches() -> None:
    broker = Broker()
    queue = broker.create_queue("q", auto_delete_on_idle=1.0)
    receiver = _Receiver()
    queue.add_consumer(receiver)
    broker.tick(now_ms() + YEAR_MS)
    assert "q" in names(broker), "deleted with a receiver attached"
    queue.remove_consumer(receiver)
    detached = now_ms()
    broker.tick(detached + 500)
    assert "q" in names(broker)
    broker.tick(detached + 1100)
    assert "q" not in names(broker)


def test_a_scheduled_message_keeps_it() -> None:
    broker = Broker()
    start = now_ms()
    queue = broker.create_queue("q", auto_delete_on_idle=1.0)
    message = StoredMessage([])
    message.scheduled_ms = start + YEAR_MS
    queue.enqueue(message, start)
    broker.tick(start + 10_000)
    assert "q" in names(broker), "deleted with a scheduled message in it"


def test_a_topic_lives_while_its_subscriptions_are_used() -> None:
    broker = Broker()
    start = now_ms()
    topic = broker.create_topic("t", auto_delete_on_idle=1.0)
    topic.touch(start)
    sub = broker.create_subscription("t", "s")
    sub.touch(start + 900)  # a receive on the subscription
    broker.tick(start + 1500)
    assert "t" in names(broker)
    broker.tick(start + 1900)
    assert names(broker) == set(), "the topic goes with its subscriptions"


def test_a_subscription_with_the_option_goes_alone() -> None:
    broker = Broker()
    entities = [broker.create_topic("t"), broker.create_subscription("t", "idle", auto_delete_on_idle=1.0),
                broker.create_subscription("t", "kept")]
    start = now_ms()  # after the creations: see the first test
    for entity in entities:
        entity.touch(start)
    broker.tick(start + 1000)
    assert names(broker) == {"t", "t/Subscriptions/kept"}


def test_an_update_restarts_the_clock_and_a_bad_value_is_refused() -> None:
    broker = Broker()
    broker.create_queue("q", auto_delete_on_idle=1.0).touch(0)
    broker.create_queue("q", lock_duration=5.0)  # ensure() on an existing entity: an update
    broker.tick(now_ms() + 500)
    assert "q" in names(broker)
    for bad in (0, -1.0):
        with pytest.raises(ServiceBusError, match="auto_delete_on_idle"):
            broker.create_queue("other", auto_delete_on_idle=bad)


# Over the wire, with the SDK.


def exists(double: ServiceBusDouble, name: str) -> bool:
    return name in {entity["name"] for entity in double.list_entities()}


async def gone_within(double: ServiceBusDouble, name: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not exists(double, name):
            return True
        await asyncio.sleep(0.05)
    return not exists(double, name)


async def test_a_queue_used_over_the_wire_lives_and_an_unused_one_goes(client: ServiceBusClient,
                                                                      double: ServiceBusDouble) -> None:
    async with client.get_queue_sender("used") as sender, client.get_queue_receiver("used") as receiver:
        # Set once the links are open: connecting may take longer than the idle time.
        double.configure_entity("used", kind="queue", auto_delete_on_idle=0.5)
        double.configure_entity("unused", kind="queue", auto_delete_on_idle=0.5)
        double.configure_entity("plain", kind="queue")
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            await sender.send_messages(ServiceBusMessage(b"x"))
            for message in await receiver.receive_messages(max_message_count=10, max_wait_time=0.2):
                await receiver.complete_message(message)
        assert exists(double, "used"), "deleted while sent to and received from"
        assert not exists(double, "unused")
    assert await gone_within(double, "used", 3.0), "still there 3 s after its last use"
    assert exists(double, "plain")


async def test_an_idle_receiver_link_keeps_it(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    async with client.get_queue_receiver("listened") as receiver:
        double.configure_entity("listened", kind="queue", auto_delete_on_idle=0.3)
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=1.0) == []
        assert exists(double, "listened"), "deleted with a receiver link open"
    assert await gone_within(double, "listened", 3.0)
