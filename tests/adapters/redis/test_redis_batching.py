"""The packed hot paths: batched XADD results, one XACK per ack_many, per-message acks batched by the
core into one XACK, a clean connection after error replies and cancelled reads, no wait_for."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

import unimq
from unimq.errors import ConfigError, PublishError


async def _pending(plain: Redis, dest: str, group: str) -> int:
    info: Any = await plain.xpending(dest, group)
    return int(info["pending"])


async def test_send_many_and_single_send_write_the_same_fields(rbroker: unimq.Broker, plain: Redis,
                                                               dest: str) -> None:
    await rbroker.ensure(dest)
    producer = rbroker.producer(dest)
    sent = await producer.send_many([b"a", b"b", b"c"])
    one = await producer.send(b"d", key="k", headers={"h": "v"})
    entries: Any = await plain.xrange(dest)
    assert [fields[b"body"] for _, fields in entries] == [b"a", b"b", b"c", b"d"]
    assert [fields[b"p:id"].decode() for _, fields in entries] == [m.message_id for m in [*sent, one]]
    assert entries[3][1][b"p:key"] == b"k" and entries[3][1][b"h:h"] == b"v"


async def test_ack_many_is_one_xack_for_the_batch(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send_many([b"%d" % i for i in range(50)])
    async with rbroker.consumer(dest, "g", prefetch=50) as consumer:
        got = await consumer.receive_many(50, timeout=3)
        assert len(got) == 50 and await _pending(plain, dest, "g") == 50
        await consumer.ack_many(got)
        assert await _pending(plain, dest, "g") == 0
        await consumer.ack_many(got)  # settled already: nothing to do


async def test_per_message_acks_go_out_as_one_xack(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send_many([b"%d" % i for i in range(30)])
    async with rbroker.consumer(dest, "g", prefetch=30) as consumer:
        sub = consumer.subscription
        calls: list[int] = []
        xack = sub.ack_many

        async def counted(deliveries: Any) -> None:
            calls.append(len(deliveries))
            await xack(deliveries)

        sub.ack_many = counted  # type: ignore[method-assign]
        got = await consumer.receive_many(30, timeout=3)
        assert len(got) == 30
        for delivery in got:
            await delivery.ack()  # queued: returns without a round trip
        await rbroker.producer(dest).send(b"after")
        late = await consumer.receive(3)
        assert late is not None
        await late.ack()
        assert calls[0] == 30
    assert sum(calls) == 31  # close sent the last one
    assert await _pending(plain, dest, "g") == 0


async def test_no_call_goes_through_wait_for(rbroker: unimq.Broker, dest: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython 3.11's wait_for can swallow a cancel (issue 32): redis-py uses it to write whenever a
    socket_timeout is set, so the driver sets none and bounds calls with asyncio.timeout."""
    await rbroker.ensure(dest, max_deliveries=5)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("asyncio.wait_for was called")

    monkeypatch.setattr(asyncio, "wait_for", refuse)
    await rbroker.producer(dest).send_many([b"a", b"b", b"c"])
    await rbroker.producer(dest).send(b"later", delay=timedelta(milliseconds=10))
    async with rbroker.consumer(dest) as consumer:
        a, b, c = await consumer.receive_many(3, timeout=3)
        await a.ack()
        await b.nack()
        await c.extend(1)
        await c.reject("no")
        assert {d.message.body for d in await consumer.receive_many(2, timeout=3)} == {b"b", b"later"}
    await rbroker.stats(dest)


async def test_error_replies_are_per_message_and_leave_the_connection_usable(
    rbroker: unimq.Broker, plain: Redis, dest: str,
) -> None:
    await plain.set(dest, b"not a stream")
    with pytest.raises(PublishError) as caught:
        await rbroker.producer(dest, retry=None).send_many([b"x", b"y"])
    assert [type(r) for r in caught.value.results] == [ConfigError, ConfigError]
    with pytest.raises(PublishError):
        await rbroker.producer(dest, retry=None).send(b"z")
    await plain.delete(dest)
    await rbroker.producer(dest).send(b"ok")  # replies were drained: the pooled connection is in sync
    entries: Any = await plain.xrange(dest)
    assert [fields[b"body"] for _, fields in entries] == [b"ok"]


async def test_cancelled_blocking_read_does_not_desync_the_pool(rbroker: unimq.Broker, redis_url: str,
                                                                dest: str) -> None:
    await rbroker.ensure(dest)
    async with unimq.connect(redis_url, maintenance_interval=5) as broker, broker.consumer(dest) as consumer:
        assert await consumer.receive(0.05) is None  # maintenance done: the next receive blocks in XREADGROUP
        waiting = asyncio.create_task(consumer.receive(5))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        sent = await broker.producer(dest).send(b"next")
        delivery = await consumer.receive(3)
        assert delivery is not None and delivery.message.message_id == sent.message_id
        await delivery.ack()


async def test_expired_entries_are_acked_not_delivered(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("g",))
    producer = rbroker.producer(dest)
    await producer.send(b"stale", ttl=timedelta(milliseconds=1))
    await asyncio.sleep(0.05)
    fresh = await producer.send(b"fresh")
    async with rbroker.consumer(dest, "g") as consumer:
        got = await consumer.receive_many(2, timeout=1)
        assert [d.message.message_id for d in got] == [fresh.message_id]
        await consumer.ack_many(got)
    assert await _pending(plain, dest, "g") == 0
