"""The double against Service Bus's documented behaviour, observed through the real SDK.

Each test names the Microsoft documentation page whose behaviour it checks, so that a difference
is a bug in the double (or a documented fidelity limit, docs/servicebus-double.md), never a
convention of the adapter's.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from azure.servicebus import ServiceBusMessage, ServiceBusMessageState, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import MessageLockLostError, ServiceBusError
from unimq_servicebus.testing.double import ServiceBusDouble


@pytest.fixture
async def client(double: ServiceBusDouble) -> AsyncIterator[ServiceBusClient]:
    """Without the SDK's retries: a fidelity test checks the first answer."""
    async with ServiceBusClient.from_connection_string(double.connection_string, retry_total=0) as sb:
        yield sb


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def take(receiver: ServiceBusReceiver, count: int, wait: float = 3.0) -> list:
    received: list = []
    deadline = time.monotonic() + wait
    while len(received) < count and time.monotonic() < deadline:
        received += await receiver.receive_messages(max_message_count=count - len(received), max_wait_time=0.5)
    return received


async def test_batch_send_is_one_operation_of_separate_messages(client: ServiceBusClient,
                                                                double: ServiceBusDouble) -> None:
    """Docs: https://learn.microsoft.com/dotnet/api/azure.messaging.servicebus.servicebussender.sendmessagesasync
    and https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide (batching).

    A batch is one transfer with one outcome, so it is stored whole or not at all; what it stores
    are separate messages, each with its own sequence number and its own settlement."""
    double.configure_entity("sessions", kind="queue", requires_session=True)
    async with client.get_queue_sender("sessions") as sender:
        refused = await sender.create_message_batch()
        refused.add_message(ServiceBusMessage(b"a", session_id="s"))
        refused.add_message(ServiceBusMessage(b"no session"))  # the entity refuses this one
        refused.add_message(ServiceBusMessage(b"c", session_id="s"))
        with pytest.raises(ServiceBusError):
            await sender.send_messages(refused)
    assert double.stats("sessions")["messages"] == 0, "part of a refused batch was stored"

    async with client.get_queue_sender("plain") as sender:
        batch = await sender.create_message_batch()
        for body in (b"m1", b"m2", b"m3"):
            batch.add_message(ServiceBusMessage(body))
        await sender.send_messages(batch)
    async with client.get_queue_receiver("plain", max_wait_time=1) as receiver:
        got = await take(receiver, 3)
        assert [str(m) for m in got] == ["m1", "m2", "m3"]
        assert len({m.sequence_number for m in got}) == 3
        await receiver.complete_message(got[0])
        await receiver.abandon_message(got[1])
        await receiver.complete_message(got[2])
        [again] = await take(receiver, 1)
        assert str(again) == "m2" and again.delivery_count == 1
        await receiver.complete_message(again)
    assert double.stats("plain")["messages"] == 0


async def test_dead_letter_reason_and_description(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    """Docs: https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues

    A dead-lettered message carries the reason and description as the application properties
    DeadLetterReason and DeadLetterErrorDescription; past MaxDeliveryCount the service dead-letters
    it with reason MaxDeliveryCountExceeded."""
    double.configure_entity("orders", kind="queue", max_delivery_count=1)
    async with client.get_queue_sender("orders") as sender:
        await sender.send_messages([ServiceBusMessage(b"bad", message_id="m-bad"),
                                    ServiceBusMessage(b"tired", message_id="m-tired")])
    async with client.get_queue_receiver("orders", max_wait_time=1) as receiver:
        bad, tired = await take(receiver, 2)
        await receiver.dead_letter_message(bad, reason="Validation", error_description="field x is missing")
        await receiver.abandon_message(tired)  # its one delivery is used up
    async with client.get_queue_receiver("orders", sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                                         max_wait_time=1) as dead:
        got = {m.message_id: m for m in await take(dead, 2)}
    assert got["m-bad"].dead_letter_reason == "Validation"
    assert got["m-bad"].dead_letter_error_description == "field x is missing"
    assert got["m-bad"].application_properties[b"DeadLetterReason"] == b"Validation"
    assert got["m-bad"].application_properties[b"DeadLetterErrorDescription"] == b"field x is missing"
    assert str(got["m-bad"]) == "bad"
    assert got["m-tired"].dead_letter_reason == "MaxDeliveryCountExceeded"


async def test_expired_lock_returns_the_message_on_time(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    """Docs: https://learn.microsoft.com/azure/service-bus-messaging/message-transfers-locks-settlement

    Peek-lock: when the lock expires the message becomes available again with its delivery count
    raised, and settling with the lost lock fails."""
    double.configure_entity("locks", kind="queue", lock_duration=1.0)
    async with client.get_queue_sender("locks") as sender:
        await sender.send_messages(ServiceBusMessage(b"slow"))
    async with client.get_queue_receiver("locks", max_wait_time=1) as receiver:
        [first] = await take(receiver, 1)
        locked_at = time.monotonic()
        assert first.locked_until_utc is not None
        early = await receiver.receive_messages(max_wait_time=0.6)
        assert early == [], "redelivered while the lock was held"
        [again] = await take(receiver, 1, wait=2.0)
        waited = time.monotonic() - locked_at
        assert 0.9 <= waited <= 1.6, f"redelivered {waited:.2f}s after the receive, lock 1 s"
        assert again.delivery_count == first.delivery_count + 1
        with pytest.raises(MessageLockLostError):
            await receiver.complete_message(first)
        await receiver.complete_message(again)


async def test_scheduled_message_and_peek_through_management(client: ServiceBusClient) -> None:
    """Docs: https://learn.microsoft.com/azure/service-bus-messaging/message-sequencing (scheduled),
    https://learn.microsoft.com/azure/service-bus-messaging/message-browsing (peek),
    https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-request-response
    (schedule-message, cancel-scheduled-message, peek-message on $management).

    A scheduled message is invisible to receivers until its time, peek shows it as scheduled, and
    a cancelled one never arrives."""
    at = utcnow() + datetime.timedelta(seconds=4)  # opening a sender and a receiver takes ~0.5 s each
    async with client.get_queue_sender("later") as sender:
        [kept] = await sender.schedule_messages(ServiceBusMessage(b"kept"), at)
        [dropped] = await sender.schedule_messages(ServiceBusMessage(b"dropped"), at)
        await sender.cancel_scheduled_messages(dropped)
    async with client.get_queue_receiver("later", max_wait_time=1) as receiver:
        [peeked] = await receiver.peek_messages(max_message_count=10, sequence_number=1)
        assert peeked.sequence_number == kept
        assert peeked.state == ServiceBusMessageState.SCHEDULED
        assert peeked.scheduled_enqueue_time_utc is not None
        assert abs((peeked.scheduled_enqueue_time_utc - at).total_seconds()) < 0.01
        assert await receiver.receive_messages(max_wait_time=0.5) == [], "delivered before its scheduled time"
        got = await take(receiver, 2, wait=6.0)
        assert [str(m) for m in got] == ["kept"]
        assert utcnow() >= at
        assert (await receiver.peek_messages(max_message_count=1, sequence_number=1))[0].state \
            == ServiceBusMessageState.ACTIVE
        await receiver.complete_message(got[0])


async def test_duplicate_detection_by_message_id_within_the_window(client: ServiceBusClient,
                                                                   double: ServiceBusDouble) -> None:
    """Docs: https://learn.microsoft.com/azure/service-bus-messaging/duplicate-detection

    With duplicate detection on, a message whose MessageId was sent within the window is accepted
    and dropped; once the window has passed, the id is new again. (Azure's smallest window is
    20 s; the double takes any, to keep the test short.)"""
    double.configure_entity("dedup", kind="queue", duplicate_detection_window=1.0)
    async with client.get_queue_sender("dedup") as sender:
        await sender.send_messages(ServiceBusMessage(b"first", message_id="same"))
        await sender.send_messages(ServiceBusMessage(b"copy", message_id="same"))  # accepted, dropped
        await sender.send_messages(ServiceBusMessage(b"other", message_id="other"))
        await asyncio.sleep(1.2)
        await sender.send_messages(ServiceBusMessage(b"later", message_id="same"))
    async with client.get_queue_receiver("dedup", max_wait_time=1) as receiver:
        got = await take(receiver, 4, wait=2.0)
        assert [str(m) for m in got] == ["first", "other", "later"]
        for message in got:
            await receiver.complete_message(message)
    assert double.stats("dedup")["duplicates"] == 1
