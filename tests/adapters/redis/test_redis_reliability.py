"""Reclaim (XAUTOCLAIM), attempts from delivery counts, nack, delay mover, reject, TTL, de-dup."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis

import unimq
from unimq.reliability import DEAD_LETTER_REASON


async def _owner_and_count(plain: Redis, dest: str, group: str) -> tuple[str, int]:
    entries: Any = await plain.xpending_range(dest, group, "-", "+", 10)
    [entry] = entries
    return str(entry["consumer"].decode()), int(entry["times_delivered"])


async def test_reclaims_stale_entry_of_crashed_plain_consumer(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    """An entry a plain consumer read and never acked is reclaimed with XAUTOCLAIM, attempt 2."""
    await rbroker.ensure(dest, groups=("g",))
    await plain.xadd(dest, {"body": b"job"})
    await plain.xreadgroup("g", "crashed", {dest: ">"}, count=1)
    async with rbroker.consumer(dest, "g", lock_timeout=0.3) as consumer:
        delivery = await consumer.receive(3)
        assert delivery is not None and delivery.message.body == b"job"
        assert delivery.attempt == 2
        owner, count = await _owner_and_count(plain, dest, "g")
        assert owner == consumer.subscription.consumer_name and count == 2  # type: ignore[attr-defined]
        await delivery.ack()
    assert (await plain.xpending(dest, "g"))["pending"] == 0


async def test_lock_expiry_redelivers_with_exact_attempts(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send(b"slow")
    async with rbroker.consumer(dest, "g", lock_timeout=0.3) as a, rbroker.consumer(dest, "g", lock_timeout=0.3) as b:
        first = await a.receive(3)
        assert first is not None and first.attempt == 1
        second = await b.receive(3)
        assert second is not None and second.attempt == 2
        third = await a.receive(3)
        assert third is not None and third.attempt == 3
        assert (await _owner_and_count(plain, dest, "g"))[1] == 3
        await first.ack()  # a late ack of a lost lock does not raise
        await third.ack()


async def test_extend_keeps_the_lock(rbroker: unimq.Broker, dest: str) -> None:
    await rbroker.producer(dest).send(b"long")
    async with rbroker.consumer(dest, lock_timeout=0.4) as a, rbroker.consumer(dest, lock_timeout=0.4) as b:
        held = await a.receive(3)
        assert held is not None
        await held.extend(timedelta(seconds=1.5))
        assert await b.receive(1.2) is None
        await held.ack()
        assert await b.receive(0.6) is None


async def test_nack_now_and_later_keep_entry_and_count(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("g", "other"))
    sent = await rbroker.producer(dest).send(b"retry-me")
    async with rbroker.consumer(dest, "g") as consumer:
        d1 = await consumer.receive(3)
        assert d1 is not None
        await d1.nack()
        d2 = await consumer.receive(3)
        assert d2 is not None and d2.attempt == 2 and d2.token == d1.token
        started = time.monotonic()
        await d2.nack(timedelta(seconds=0.5))
        assert (await plain.xpending(dest, "g"))["pending"] == 0
        d3 = await consumer.receive(3)
        assert d3 is not None and time.monotonic() - started >= 0.45
        assert d3.attempt == 3 and d3.message.message_id == sent.message_id and d3.token == d1.token
        await d3.ack()
    async with rbroker.consumer(dest, "other") as other:  # the retries stayed in group g
        only = await other.receive_many(5, 1)
        assert [d.message.body for d in only] == [b"retry-me"] and only[0].attempt == 1
        await only[0].ack()


async def test_delayed_send_reaches_every_group_once(rbroker: unimq.Broker, dest: str) -> None:
    await rbroker.ensure(dest, groups=("a", "b"))
    await rbroker.producer(dest).send(b"later", delay=timedelta(seconds=0.4))
    async with rbroker.consumer(dest, "a") as a, rbroker.consumer(dest, "b") as b:
        assert await a.receive(0.1) is None
        got_a, got_b = await a.receive(3), await b.receive(3)
        assert got_a is not None and got_b is not None and got_a.token == got_b.token
        await got_a.ack()
        await got_b.ack()
        assert await a.receive(0.5) is None


async def test_delay_mover_is_safe_with_several_consumers(dest: str, plain: Redis, redis_url: str) -> None:
    """Five connections run the mover concurrently; every delayed message lands exactly once."""
    count = 300
    brokers = [await unimq.connect(redis_url, maintenance_interval=0.01) for _ in range(5)]
    try:
        await brokers[0].ensure(dest)
        await brokers[0].producer(dest).send_many(
            [unimq.Message(body=b"%d" % i, delay=timedelta(seconds=0.3)) for i in range(count)]
        )
        consumers = [await b.consumer(dest, prefetch=50).open() for b in brokers]
        seen: list[bytes] = []

        async def drain(consumer: unimq.Consumer) -> None:
            while (delivery := await consumer.receive(1.0)) is not None:
                seen.append(delivery.message.body)
                await delivery.ack()

        await asyncio.gather(*(drain(c) for c in consumers))
        assert sorted(seen) == sorted(b"%d" % i for i in range(count))
        assert await plain.xlen(dest) == count
        assert await plain.zcard(f"{dest}:delayed") == 0
        for consumer in consumers:
            await consumer.close()
    finally:
        await brokers[0].delete(dest)
        for broker in brokers:
            await broker.close()


async def test_reject_and_max_deliveries_dead_letter(rbroker: unimq.Broker, plain: Redis, dest: str,
                                                    redis_url: str) -> None:
    """max_deliveries ensured by one Broker is enforced by a consumer of another (it reads DEST:config)."""
    await rbroker.ensure(dest, dead_letter=True, max_deliveries=2)
    producer = rbroker.producer(dest)
    bad = await producer.send(b"bad", headers={"k": "v"})
    poison = await producer.send(b"poison")
    async with unimq.connect(redis_url) as other, other.consumer(dest, lock_timeout=0.2) as consumer:
        first = await consumer.receive(3)
        assert first is not None and first.message.message_id == bad.message_id
        await first.reject("cannot parse")
        for _ in range(2):
            got = await consumer.receive(3)
            assert got is not None and got.message.message_id == poison.message_id
            await got.nack()
        assert await consumer.receive(0.5) is None
    dlq = rbroker._driver.dead_letter_destination(dest)
    assert dlq == f"{dest}:dlq"
    async with rbroker.consumer(dlq) as reader:
        dead = await reader.receive_many(2, 3)
        assert [d.message.message_id for d in dead] == [bad.message_id, poison.message_id]
        assert dead[0].message.headers[DEAD_LETTER_REASON] == "cannot parse"
        assert dead[0].message.headers["k"] == "v"
        assert "2 times" in dead[1].message.headers[DEAD_LETTER_REASON]
        for d in dead:
            await d.ack()
    assert (await plain.xpending(dest, "default"))["pending"] == 0


async def test_ttl_expired_entries_are_dropped(rbroker: unimq.Broker, dest: str) -> None:
    producer = rbroker.producer(dest)
    await producer.send(b"stale", ttl=timedelta(milliseconds=100))
    await producer.send(b"fresh", ttl=timedelta(seconds=30))
    await asyncio.sleep(0.2)
    async with rbroker.consumer(dest) as consumer:
        got = await consumer.receive_many(2, 1)
        assert [d.message.body for d in got] == [b"fresh"]
        await got[0].ack()


async def test_deduplication_window(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, deduplication=timedelta(seconds=30))
    producer = rbroker.producer(dest)
    await producer.send(b"1", message_id="same")
    await producer.send(b"2", message_id="same")
    await producer.send_many([unimq.Message(body=b"3", message_id="same"), unimq.Message(body=b"4")])
    assert await plain.xlen(dest) == 2


async def test_close_hands_back_unsettled(rbroker: unimq.Broker, dest: str) -> None:
    await rbroker.producer(dest).send(b"held")
    async with rbroker.consumer(dest, lock_timeout=30) as first:
        assert await first.receive(3) is not None
    async with rbroker.consumer(dest, lock_timeout=30) as second:
        again = await second.receive(3)
        assert again is not None and again.attempt == 2
        await again.ack()


async def test_delayed_send_keeps_large_body_and_many_headers(rbroker: unimq.Broker, dest: str) -> None:
    """The msgpack member the mover unpacks: str8/16/32 lengths and an array16 of fields."""
    body = bytes(range(256)) * 300
    headers = {f"h{i}": "v" * i for i in range(40)}
    sent = await rbroker.producer(dest).send(body, headers=headers, key="k", delay=timedelta(milliseconds=200))
    async with rbroker.consumer(dest) as consumer:
        got = await consumer.receive(3)
        assert got is not None
        assert got.message.body == body and got.message.headers == headers
        assert got.message.key == "k" and got.message.message_id == sent.message_id
        await got.ack()
