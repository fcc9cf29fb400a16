"""The Service Bus test double, driven by the real azure-servicebus SDK (aio, pyamqp transport).

Each test gets its own double on an ephemeral port, so tests are independent and parallel-safe.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import MessageLockLostError, SessionCannotBeLockedError
from proton import Message
from proton.utils import BlockingConnection
from unimq_servicebus.testing.double import ServiceBusDouble


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def receive_all(receiver, count: int, wait: float = 3.0) -> list:
    """Receive until ``count`` messages arrived or ``wait`` seconds passed."""
    received: list = []
    deadline = time.monotonic() + wait
    while len(received) < count and time.monotonic() < deadline:
        batch = await receiver.receive_messages(max_message_count=count - len(received), max_wait_time=0.5)
        received.extend(batch)
    return received


async def test_connection_string_convention(double: ServiceBusDouble) -> None:
    assert double.connection_string == (
        f"Endpoint=sb://127.0.0.1:{double.port};SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"
    )


async def test_round_trip_preserves_properties(client: ServiceBusClient) -> None:
    sent = ServiceBusMessage(
        b"\x00\x01binary\xff",
        application_properties={"s": "text", "i": 42, "f": 1.5, "b": True},
        message_id="mid-1",
        correlation_id="cid-1",
        reply_to="replies",
        content_type="application/octet-stream",
        subject="greeting",
        to="someone",
        partition_key="pk",
        time_to_live=datetime.timedelta(minutes=5),
    )
    async with client.get_queue_sender("roundtrip") as sender:
        await sender.send_messages(sent)
    async with client.get_queue_receiver("roundtrip") as receiver:
        [received] = await receive_all(receiver, 1)
        assert b"".join(received.body) == b"\x00\x01binary\xff"
        assert received.message_id == "mid-1"
        assert received.correlation_id == "cid-1"
        assert received.reply_to == "replies"
        assert received.content_type == "application/octet-stream"
        assert received.subject == "greeting"
        assert received.to == "someone"
        assert received.partition_key == "pk"
        assert received.time_to_live == datetime.timedelta(minutes=5)
        assert received.application_properties == {b"s": b"text", b"i": 42, b"f": 1.5, b"b": True}
        assert received.sequence_number == 1
        assert received.delivery_count == 0
        assert isinstance(received.lock_token, uuid.UUID)
        assert received.locked_until_utc > utcnow()
        assert abs((received.enqueued_time_utc - utcnow()).total_seconds()) < 5
        await receiver.complete_message(received)


async def test_batch_of_100_then_receive_all(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    async with client.get_queue_sender("batch") as sender:
        batch = await sender.create_message_batch()
        for i in range(100):
            batch.add_message(ServiceBusMessage(f"m{i}", application_properties={"n": i}))
        await sender.send_messages(batch)
    async with client.get_queue_receiver("batch", prefetch_count=100) as receiver:
        received = await receive_all(receiver, 100)
        assert [str(m) for m in received] == [f"m{i}" for i in range(100)]
        assert [m.application_properties[b"n"] for m in received] == list(range(100))
        for message in received:
            await receiver.complete_message(message)
    assert double.stats("batch")["messages"] == 0


async def test_complete_removes(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    async with client.get_queue_sender("complete") as sender:
        await sender.send_messages([ServiceBusMessage("a"), ServiceBusMessage("b")])
    async with client.get_queue_receiver("complete") as receiver:
        received = await receive_all(receiver, 2)
        await receiver.complete_message(received[0])
        await receiver.complete_message(received[1])
        assert await receiver.receive_messages(max_wait_time=0.5) == []
    stats = double.stats("complete")
    assert stats["messages"] == 0 and stats["completed"] == 2


async def test_abandon_redelivers_with_incremented_count(client: ServiceBusClient) -> None:
    async with client.get_queue_sender("abandon") as sender:
        await sender.send_messages(ServiceBusMessage("again"))
    async with client.get_queue_receiver("abandon") as receiver:
        [first] = await receive_all(receiver, 1)
        assert first.delivery_count == 0
        await receiver.abandon_message(first)
        [second] = await receive_all(receiver, 1)
        assert str(second) == "again"
        assert second.delivery_count == 1
        assert second.sequence_number == first.sequence_number
        await receiver.complete_message(second)


async def test_dead_letter_with_reason_and_description(client: ServiceBusClient) -> None:
    async with client.get_queue_sender("dlq") as sender:
        await sender.send_messages(ServiceBusMessage("poison", application_properties={"keep": "me"}))
    async with client.get_queue_receiver("dlq") as receiver:
        [message] = await receive_all(receiver, 1)
        await receiver.dead_letter_message(message, reason="bad-input", error_description="could not parse")
        assert await receiver.receive_messages(max_wait_time=0.5) == []
    async with client.get_queue_receiver("dlq", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        [dead] = await receive_all(dlq, 1)
        assert str(dead) == "poison"
        assert dead.dead_letter_reason == "bad-input"
        assert dead.dead_letter_error_description == "could not parse"
        assert dead.application_properties[b"keep"] == b"me"
        await dlq.complete_message(dead)


async def test_lock_expiry_redelivers(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    double.configure_entity("shortlock", lock_duration=2)
    async with client.get_queue_sender("shortlock") as sender:
        await sender.send_messages(ServiceBusMessage("slow"))
    async with client.get_queue_receiver("shortlock") as receiver:
        [first] = await receive_all(receiver, 1)
        assert (first.locked_until_utc - utcnow()).total_seconds() < 2.5
        await asyncio.sleep(2.3)
        [again] = await receive_all(receiver, 1)
        assert again.delivery_count == 1
        assert again.lock_token != first.lock_token
        with pytest.raises(MessageLockLostError):
            await receiver.complete_message(first)
        await receiver.complete_message(again)


async def test_renew_message_lock_extends(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    double.configure_entity("renew", lock_duration=2)
    async with client.get_queue_sender("renew") as sender:
        await sender.send_messages(ServiceBusMessage("keep"))
    async with client.get_queue_receiver("renew") as receiver:
        [message] = await receive_all(receiver, 1)
        before = message.locked_until_utc
        for _ in range(3):
            await asyncio.sleep(1.0)
            renewed = await receiver.renew_message_lock(message)
            assert renewed > before
            before = renewed
        # 3 s after receipt, past the original 2 s lock: still ours, nothing redelivered.
        assert await receiver.receive_messages(max_wait_time=0.3) == []
        await receiver.complete_message(message)


async def test_max_delivery_count_dead_letters(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    double.configure_entity("maxdc", max_delivery_count=2)
    async with client.get_queue_sender("maxdc") as sender:
        await sender.send_messages(ServiceBusMessage("flaky"))
    async with client.get_queue_receiver("maxdc") as receiver:
        for attempt in range(2):
            [message] = await receive_all(receiver, 1)
            assert message.delivery_count == attempt
            await receiver.abandon_message(message)
        assert await receiver.receive_messages(max_wait_time=0.5) == []
    async with client.get_queue_receiver("maxdc", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        [dead] = await receive_all(dlq, 1)
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert dead.dead_letter_error_description


async def test_peek_does_not_consume(client: ServiceBusClient) -> None:
    async with client.get_queue_sender("peek") as sender:
        await sender.send_messages([ServiceBusMessage(f"p{i}") for i in range(5)])
    async with client.get_queue_receiver("peek") as receiver:
        peeked = await receiver.peek_messages(max_message_count=3)
        assert [str(m) for m in peeked] == ["p0", "p1", "p2"]
        assert [m.sequence_number for m in peeked] == [1, 2, 3]
        more = await receiver.peek_messages(max_message_count=10)  # continues after the last peeked
        assert [str(m) for m in more] == ["p3", "p4"]
        assert await receiver.peek_messages(max_message_count=10, sequence_number=100) == []
        received = await receive_all(receiver, 5)
        assert [str(m) for m in received] == [f"p{i}" for i in range(5)]


async def test_schedule_and_cancel(client: ServiceBusClient) -> None:
    async with client.get_queue_sender("sched") as sender:
        at = utcnow() + datetime.timedelta(seconds=3)
        [keep] = await sender.schedule_messages(ServiceBusMessage("later"), at)
        [drop] = await sender.schedule_messages(ServiceBusMessage("never"), at)
        assert keep != drop
        await sender.cancel_scheduled_messages(drop)
    async with client.get_queue_receiver("sched") as receiver:
        [peeked] = await receiver.peek_messages(max_message_count=5)
        assert str(peeked.state.name) == "SCHEDULED"
        assert await receiver.receive_messages(max_wait_time=0.5) == []
        received = await receive_all(receiver, 2, wait=5.0)
        assert [str(m) for m in received] == ["later"]
        assert received[0].scheduled_enqueue_time_utc is not None
        assert utcnow() >= at


async def test_scheduled_enqueue_time_on_send(client: ServiceBusClient) -> None:
    async with client.get_queue_sender("sched2") as sender:
        at = utcnow() + datetime.timedelta(seconds=3)
        await sender.send_messages(ServiceBusMessage("x", scheduled_enqueue_time_utc=at))
    async with client.get_queue_receiver("sched2") as receiver:
        assert await receiver.receive_messages(max_wait_time=0.3) == []
        assert [str(m) for m in await receive_all(receiver, 1, wait=5.0)] == ["x"]
        assert utcnow() >= at


async def test_topic_fan_out(client: ServiceBusClient) -> None:
    # Subscriptions are created by their first receiver; a send fans out to those that exist.
    async with client.get_subscription_receiver("events", "billing") as billing, \
            client.get_subscription_receiver("events", "audit") as audit:
        await billing.peek_messages()
        await audit.peek_messages()
        async with client.get_topic_sender("events") as sender:
            await sender.send_messages([ServiceBusMessage("e1"), ServiceBusMessage("e2")])
        for receiver in (billing, audit):
            received = await receive_all(receiver, 2)
            assert [str(m) for m in received] == ["e1", "e2"]
            for message in received:
                await receiver.complete_message(message)


async def test_receive_and_delete(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    async with client.get_queue_sender("rad") as sender:
        await sender.send_messages([ServiceBusMessage("a"), ServiceBusMessage("b")])
    async with client.get_queue_receiver("rad", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        received = await receive_all(receiver, 2)
        assert [str(m) for m in received] == ["a", "b"]
        assert received[0].lock_token is None
    assert double.stats("rad")["messages"] == 0


async def test_ttl_expiry(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    async with client.get_queue_sender("ttl") as sender:
        # The SDK sends whole seconds of TTL (a 0.5 s TTL goes out as 0, i.e. no expiry).
        await sender.send_messages(ServiceBusMessage("short", time_to_live=datetime.timedelta(seconds=1)))
        await sender.send_messages(ServiceBusMessage("long"))
    await asyncio.sleep(1.2)
    async with client.get_queue_receiver("ttl") as receiver:
        received = await receive_all(receiver, 2, wait=1.5)
        assert [str(m) for m in received] == ["long"]
    assert double.stats("ttl")["expired"] == 1


async def test_ttl_expiry_dead_letters_when_configured(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    double.configure_entity("ttldlq", default_ttl=0.3, dead_lettering_on_message_expiration=True)
    async with client.get_queue_sender("ttldlq") as sender:
        await sender.send_messages(ServiceBusMessage("old"))
    await asyncio.sleep(0.5)
    async with client.get_queue_receiver("ttldlq") as receiver:
        assert await receiver.receive_messages(max_wait_time=0.5) == []
    async with client.get_queue_receiver("ttldlq", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        [dead] = await receive_all(dlq, 1)
        assert dead.dead_letter_reason == "TTLExpiredException"


async def test_duplicate_detection(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    double.configure_entity("dedup", duplicate_detection_window=60)
    async with client.get_queue_sender("dedup") as sender:
        for body in ("first", "second", "third"):
            await sender.send_messages(ServiceBusMessage(body, message_id="same"))
        await sender.send_messages(ServiceBusMessage("other", message_id="different"))
    async with client.get_queue_receiver("dedup") as receiver:
        received = await receive_all(receiver, 3, wait=1.5)
        assert [str(m) for m in received] == ["first", "other"]
    assert double.stats("dedup")["duplicates"] == 2


async def test_defer_and_receive_deferred(client: ServiceBusClient) -> None:
    async with client.get_queue_sender("defer") as sender:
        await sender.send_messages(ServiceBusMessage("later"))
    async with client.get_queue_receiver("defer") as receiver:
        [message] = await receive_all(receiver, 1)
        await receiver.defer_message(message)
        assert await receiver.receive_messages(max_wait_time=0.3) == []
        [deferred] = await receiver.receive_deferred_messages([message.sequence_number])
        assert str(deferred) == "later"
        await receiver.complete_message(deferred)
        assert await receiver.peek_messages(max_message_count=5, sequence_number=1) == []


async def test_sessions(client: ServiceBusClient, double: ServiceBusDouble) -> None:
    double.configure_entity("sessions", kind="queue", requires_session=True)
    async with client.get_queue_sender("sessions") as sender:
        await sender.send_messages([ServiceBusMessage(f"a{i}", session_id="A") for i in range(3)])
        await sender.send_messages([ServiceBusMessage(f"b{i}", session_id="B") for i in range(2)])
    async with client.get_queue_receiver("sessions", session_id="B") as receiver:
        assert receiver.session.session_id == "B"
        assert receiver.session.locked_until_utc > utcnow()
        received = await receive_all(receiver, 2)
        assert [str(m) for m in received] == ["b0", "b1"]
        for message in received:
            await receiver.complete_message(message)
        await receiver.session.set_state(b"checkpoint")
        assert await receiver.session.get_state() == b"checkpoint"
        renewed = await receiver.session.renew_lock()
        assert renewed > utcnow()
        with pytest.raises(SessionCannotBeLockedError):
            async with client.get_queue_receiver("sessions", session_id="B") as second:
                await second.receive_messages(max_wait_time=0.5)
    async with client.get_queue_receiver("sessions", session_id=NEXT_AVAILABLE_SESSION,
                                         max_wait_time=2) as receiver:
        assert receiver.session.session_id == "A"
        received = await receive_all(receiver, 3)
        assert [str(m) for m in received] == ["a0", "a1", "a2"]
        for message in received:
            await receiver.complete_message(message)


async def test_control_node(double: ServiceBusDouble, client: ServiceBusClient) -> None:
    def request(operation: str, **body: object) -> tuple[int, object]:
        connection = BlockingConnection(f"127.0.0.1:{double.port}", sasl_enabled=False)
        try:
            receiver = connection.create_receiver("$unimq-control")
            sender = connection.create_sender("$unimq-control")
            sender.send(Message(id=str(uuid.uuid4()), reply_to="$unimq-control",
                                properties={"operation": operation}, body=body))
            reply = receiver.receive(timeout=5)
            return reply.properties["statusCode"], reply.body
        finally:
            connection.close()

    status, body = await asyncio.to_thread(request, "create-queue", name="ctl-q", options={"lock_duration": 5})
    assert status == 200 and body["config"]["lock_duration"] == 5
    status, _ = await asyncio.to_thread(request, "create-topic", name="ctl-t")
    assert status == 200
    status, _ = await asyncio.to_thread(request, "create-subscription", topic="ctl-t", name="s1")
    assert status == 200
    status, body = await asyncio.to_thread(request, "list")
    names = {(e["name"], e["kind"]) for e in body["entities"]}
    assert {("ctl-q", "queue"), ("ctl-t", "topic"), ("ctl-t/Subscriptions/s1", "subscription")} <= names

    async with client.get_queue_sender("ctl-q") as sender:
        await sender.send_messages([ServiceBusMessage("x"), ServiceBusMessage("y")])
    status, body = await asyncio.to_thread(request, "stats", name="ctl-q")
    assert status == 200 and body["active"] == 2 and body["dead_letter_messages"] == 0

    status, _ = await asyncio.to_thread(request, "delete", name="ctl-q")
    assert status == 200
    status, body = await asyncio.to_thread(request, "stats", name="ctl-q")
    assert status == 404
    status, _ = await asyncio.to_thread(request, "bogus")
    assert status == 400


async def test_throughput_smoke(client: ServiceBusClient) -> None:
    """Not a benchmark: guards against accidental slowness (e.g. a per-message sleep)."""
    started = time.perf_counter()
    async with client.get_queue_sender("fast") as sender:
        for _ in range(10):
            batch = await sender.create_message_batch()
            for i in range(100):
                batch.add_message(ServiceBusMessage(b"x" * 100, application_properties={"i": i}))
            await sender.send_messages(batch)
    async with client.get_queue_receiver("fast", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE,
                                         prefetch_count=500) as receiver:
        received = await receive_all(receiver, 1000, wait=10)
    assert len(received) == 1000
    assert time.perf_counter() - started < 10


def test_sync_client_round_trip(double: ServiceBusDouble) -> None:
    from azure.servicebus import ServiceBusClient as SyncClient

    with SyncClient.from_connection_string(double.connection_string) as sb:
        with sb.get_queue_sender("sync") as sender:
            sender.send_messages([ServiceBusMessage("s1"), ServiceBusMessage("s2")])
        with sb.get_queue_receiver("sync", max_wait_time=2) as receiver:
            received = receiver.receive_messages(max_message_count=2, max_wait_time=2)
            assert [str(m) for m in received] == ["s1", "s2"]
            for message in received:
                receiver.complete_message(message)
    assert double.stats("sync")["messages"] == 0


def test_sasl_anonymous_accepted(double: ServiceBusDouble) -> None:
    connection = BlockingConnection(f"127.0.0.1:{double.port}", sasl_enabled=True, allowed_mechs="ANONYMOUS")
    try:
        receiver = connection.create_receiver("$unimq-control")
        sender = connection.create_sender("$unimq-control")
        sender.send(Message(id=str(uuid.uuid4()), properties={"operation": "list"}, body={}))
        assert receiver.receive(timeout=5).properties["statusCode"] == 200
    finally:
        connection.close()
