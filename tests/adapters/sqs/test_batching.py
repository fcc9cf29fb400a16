"""Which SQS calls unimq makes: one message is one SendMessage, ``ack_many`` is DeleteMessageBatch per 10."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import unimq


@contextmanager
def recorded_calls(broker: unimq.Broker) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """(operation, params) of every call the broker's boto3 client makes inside the block."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(model: Any, params: Any, **_: Any) -> None:
        calls.append((model.name, params))

    events = broker.native.meta.events
    events.register("before-parameter-build.sqs", record, unique_id="unimq-test-record")
    try:
        yield calls
    finally:
        events.unregister("before-parameter-build.sqs", unique_id="unimq-test-record")


async def test_one_message_is_one_send_message(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    producer = broker.producer(name)
    with recorded_calls(broker) as calls:
        sent = await producer.send(b"one", headers={"h": "v"}, correlation_id="c-1")
        await producer.send_many([b"a", b"b"])
    assert [op for op, _ in calls] == ["SendMessage", "SendMessageBatch"]
    async with broker.consumer(name) as consumer:
        got = await consumer.receive_many(3, timeout=5)
        while len(got) < 3:
            got += await consumer.receive_many(3 - len(got), timeout=5)
        by_body = {d.message.body: d.message for d in got}
        assert by_body[b"one"].message_id == sent.message_id
        assert by_body[b"one"].headers == {"h": "v"} and by_body[b"one"].correlation_id == "c-1"
        await consumer.ack_many(got)


async def test_ack_many_deletes_in_batches_of_ten(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    await broker.producer(name).send_many([b"m%d" % i for i in range(23)])
    async with broker.consumer(name, prefetch=50) as consumer:
        got: list[unimq.Delivery] = []
        while len(got) < 23:
            got += await consumer.receive_many(23 - len(got), timeout=5)
        with recorded_calls(broker) as calls:
            await consumer.ack_many(got)
            await consumer.ack_many(got)  # settled already: no call
    assert sorted(len(p["Entries"]) for op, p in calls if op == "DeleteMessageBatch") == [3, 10, 10]
    assert {op for op, _ in calls} == {"DeleteMessageBatch"}
    stats = await broker.stats(name)
    assert (stats.depth, stats.in_flight) == (0, 0)


async def test_ack_many_after_lost_lock_does_not_raise(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    await broker.producer(name).send(b"x")
    async with broker.consumer(name, lock_timeout=1) as first:
        stale = await first.receive_many(1, timeout=5)
        assert len(stale) == 1
        async with broker.consumer(name) as second:
            again = await second.receive(timeout=10)  # the lock expired: redelivered with a new handle
            assert again is not None and again.attempt >= 2
            await first.ack_many(stale)
            await again.ack()
