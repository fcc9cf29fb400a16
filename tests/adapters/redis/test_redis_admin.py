"""URL options, errors, ensure/peek/stats/destinations/delete, replay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

import unimq
from unimq.errors import AuthenticationError, BrokerConnectionError, CapabilityError, ConfigError, NotFound


async def test_url_options_and_errors() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        await unimq.connect("redis://127.0.0.1:6379/0?bogus=1")
    with pytest.raises(ConfigError, match="rediss"):
        await unimq.connect("redis://127.0.0.1:6379/0?ssl_ca_certs=/x")
    with pytest.raises(BrokerConnectionError) as info:
        await unimq.connect("redis://user:hunter2secret@127.0.0.1:1/0?connect_timeout=0.5")
    assert "hunter2secret" not in str(info.value) and info.value.retryable
    with pytest.raises(AuthenticationError) as refused:
        await unimq.connect("redis://nobody:hunter2secret@127.0.0.1:6379/0")
    assert "hunter2secret" not in str(refused.value) and not refused.value.retryable
    broker = await unimq.connect("redis://127.0.0.1:6379/0?prefix=app:&maxlen=100&default_group=main")
    assert "redis" in repr(broker)
    await broker.close()


async def test_ensure_groups_get_messages_sent_after(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await plain.xadd(dest, {"body": b"before"})
    await rbroker.ensure(dest, groups=("g",), dead_letter=True, lock_timeout=timedelta(seconds=5))
    await rbroker.producer(dest).send(b"after")
    async with rbroker.consumer(dest, "g") as consumer:
        assert [d.message.body for d in await consumer.receive_many(5, 0.5)] == [b"after"]
    async with rbroker.consumer(dest) as default:  # the default group starts at the beginning
        assert [d.message.body for d in await default.receive_many(5, 0.5)] == [b"before", b"after"]
    assert {g["name"] for g in await plain.xinfo_groups(f"{dest}:dlq")} == {b"default"}
    assert await plain.hgetall(f"{dest}:config") == {b"lock_timeout_ms": b"5000"}
    async with rbroker.consumer(dest, "g") as ensured, rbroker.consumer(dest, "g", lock_timeout=2) as own:
        assert (ensured.subscription.lock_timeout, own.subscription.lock_timeout) == (5.0, 2.0)
    for refused in ({"retention": timedelta(days=1)}, {"partitions": 2}, {"fifo": True}, {"sessions": True},
                    {"replication": 2}):
        with pytest.raises(CapabilityError, match=next(iter(refused))):
            await rbroker.ensure(dest, **refused)


async def test_replay_start(rbroker: unimq.Broker, dest: str) -> None:
    producer = rbroker.producer(dest)
    await producer.send(b"old")
    await asyncio.sleep(0.01)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await producer.send(b"new")
    async with rbroker.consumer(dest, "from-start", start="earliest") as c:
        assert [d.message.body for d in await c.receive_many(5, 0.5)] == [b"old", b"new"]
    async with rbroker.consumer(dest, "from-time", start=middle) as c:
        assert [d.message.body for d in await c.receive_many(5, 0.5)] == [b"new"]
    async with rbroker.consumer(dest, "from-now", start="latest") as c:
        assert await c.receive(0.3) is None


async def test_peek_stats_destinations_delete(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send_many([b"a", b"b", b"c"])
    await rbroker.producer(dest).send(b"d", delay=timedelta(seconds=60))
    async with rbroker.consumer(dest, prefetch=1) as consumer:
        first = await consumer.receive(3)
        assert first is not None
        assert [m.body for m in await rbroker.peek(dest, 10)] == [b"b", b"c"]
        stats = await rbroker.stats(dest)
        assert (stats.in_flight, stats.lag, stats.depth, stats.dead_letter_depth) == (1, 2, 3, 0)
        await first.reject("no")
    stats = await rbroker.stats(dest, "g")
    assert (stats.lag, stats.dead_letter_depth, stats.detail["delayed"]) == (3, 1, 1)
    with pytest.raises(NotFound):
        await rbroker.stats(dest, "missing")
    assert {dest, f"{dest}:dlq"} <= set(await rbroker.destinations())
    await rbroker.delete(dest)
    assert not await plain.exists(dest, f"{dest}:dlq", f"{dest}:delayed", f"{dest}:config")
    with pytest.raises(NotFound):
        await rbroker.peek(dest, 1)


async def test_wrong_type_is_config_error(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await plain.set(dest, "not a stream")
    with pytest.raises(unimq.PublishError) as info:
        await rbroker.producer(dest, retry=None).send(b"x")
    assert isinstance(info.value.results[0], ConfigError)


async def test_peek_shows_what_the_default_group_gets_next(rbroker: unimq.Broker, dest: str) -> None:
    """Reclaimable pending entries (nacked, handed back at close) first, then the undelivered ones;
    an entry a live consumer holds is not shown."""
    await rbroker.producer(dest).send_many([b"a", b"b", b"c"])
    async with rbroker.consumer(dest, prefetch=2) as consumer:
        a, _held = await consumer.receive_many(2, timeout=3)
        await a.nack()
        assert [m.body for m in await rbroker.peek(dest, 10)] == [b"a", b"c"]
        assert [m.body for m in await rbroker.peek(dest, 1)] == [b"a"]
    assert [m.body for m in await rbroker.peek(dest, 10)] == [b"a", b"b", b"c"]
