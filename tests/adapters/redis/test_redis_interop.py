"""Interop with plain redis-py, both directions, and the stream-field mapping."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

import unimq


async def test_plain_producer_body_field(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    entry_id: Any = await plain.xadd(dest, {"body": b"\x00raw", "type": "order", "h:trace": "abc", "p:key": "k1"})
    async with rbroker.consumer(dest) as consumer:
        delivery = await consumer.receive(5)
        assert delivery is not None
        assert delivery.message.body == b"\x00raw"
        assert delivery.message.headers == {"type": "order", "trace": "abc"}
        assert delivery.message.key == "k1"
        assert delivery.message.message_id == entry_id.decode()
        assert delivery.attempt == 1
        native_id, fields = delivery.native
        assert native_id == entry_id and fields[b"type"] == b"order"
        await delivery.ack()
    assert (await plain.xpending(dest, "default"))["pending"] == 0


async def test_plain_producer_single_arbitrary_field(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await plain.xadd(dest, {"payload": b'{"n": 1}'})
    await plain.xadd(dest, {"a": "1", "b": "2"})
    async with rbroker.consumer(dest) as consumer:
        single, several = await consumer.receive_many(2, 5)
        assert single.message.body == b'{"n": 1}' and single.message.headers == {}
        assert several.message.body == b"" and several.message.headers == {"a": "1", "b": "2"}
        await single.ack()
        await several.ack()


async def test_unimq_producer_plain_consumer(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("plain",))
    sent = await rbroker.producer(dest).send(
        b"payload", key="c-42", headers={"tenant": "t1"}, correlation_id="corr", reply_to="replies",
        content_type="text/plain",
    )
    reply: Any = await plain.xreadgroup("plain", "app-1", {dest: ">"}, count=10, block=2000)
    [(entry_id, fields)] = reply[0][1]
    assert fields[b"body"] == b"payload"
    assert fields[b"h:tenant"] == b"t1"
    assert fields[b"p:id"] == sent.message_id.encode()
    assert fields[b"p:key"] == b"c-42"
    assert fields[b"p:correlation-id"] == b"corr"
    assert fields[b"p:reply-to"] == b"replies"
    assert fields[b"p:content-type"] == b"text/plain"
    assert await plain.xack(dest, "plain", entry_id) == 1


async def test_round_trip_properties(rbroker: unimq.Broker, dest: str) -> None:
    sent = await rbroker.producer(dest).send(b"x", key="k", headers={"h": "v"}, correlation_id="c",
                                             reply_to="r", content_type="application/json")
    async with rbroker.consumer(dest) as consumer:
        got = await consumer.receive(5)
        assert got is not None
        m = got.message
        assert (m.body, m.key, m.headers, m.message_id, m.correlation_id, m.reply_to, m.content_type) == (
            b"x", "k", {"h": "v"}, sent.message_id, "c", "r", "application/json")
        assert m.timestamp is not None
        await got.ack()


async def test_native_escape_hatches(rbroker: unimq.Broker, dest: str) -> None:
    assert isinstance(rbroker.native, Redis)
    assert await rbroker.native.ping()
