"""``ack_many`` after a full read carries the next XREADGROUP in the same write (one round trip per
batch): the XACK has reached Redis when it returns, the entries read ahead are handed out once, in
order, and handed back on close."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

import unimq


async def _pending_ids(plain: Redis, dest: str, group: str) -> set[bytes]:
    entries: Any = await plain.xpending_range(dest, group, "-", "+", 1000)
    return {entry["message_id"] for entry in entries}


async def test_ack_many_reads_ahead_without_holding_more(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send_many([b"%d" % i for i in range(250)])
    async with rbroker.consumer(dest, "g", prefetch=100) as consumer:
        sub: Any = consumer.subscription
        first = await consumer.receive_batch(100, timeout=3)
        assert len(first) == 100
        await consumer.ack_many(first)
        pending = await _pending_ids(plain, dest, "g")
        assert not pending & {d.token for d in first}  # acked at Redis before ack_many returned
        assert len(pending) == 100 == len(sub._ahead)  # read ahead: as many as acked, no more
        bodies = [d.message.body for d in first]
        while len(bodies) < 250:
            batch = await consumer.receive_batch(100, timeout=3)
            assert batch
            bodies += [d.message.body for d in batch]
            await consumer.ack_many(batch)
        assert bodies == [b"%d" % i for i in range(250)]
        assert await consumer.receive_batch(100, timeout=0.2) == []
    assert await _pending_ids(plain, dest, "g") == set()


async def test_entries_read_ahead_go_back_on_close(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send_many([b"%d" % i for i in range(150)])
    async with rbroker.consumer(dest, "g", prefetch=50) as consumer:
        await consumer.ack_many(await consumer.receive_batch(50, timeout=3))
        assert len(consumer.subscription._ahead) == 50  # type: ignore[attr-defined]
    async with rbroker.consumer(dest, "g", prefetch=100) as other:
        rest = await other.receive_many(100, timeout=3)
        assert sorted(int(d.message.body) for d in rest) == list(range(50, 150))
        await other.ack_many(rest)


async def test_no_read_ahead_when_the_read_was_not_full(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    """A consumer at the tail of the stream reads no entry it was not asked for."""
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send_many([b"%d" % i for i in range(30)])
    async with rbroker.consumer(dest, "g", prefetch=100) as consumer:
        got = await consumer.receive_batch(100, timeout=3)
        assert len(got) == 30
        await rbroker.producer(dest).send_many([b"late"])
        await consumer.ack_many(got)
        assert await _pending_ids(plain, dest, "g") == set()
        late = await consumer.receive_batch(100, timeout=3)
        assert [d.message.body for d in late] == [b"late"]
        await consumer.ack_many(late)
