"""A large prefetch is handed out a chunk at a time (``CHUNK``), and on the per-message path the
core's ack batcher flushes per chunk, so each ``ack_many`` carries the next XREADGROUP: nothing is
lost, duplicated or reordered, a read in flight survives a cancelled ``receive`` and goes back on
close."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from unimq_redis.subscription import CHUNK, READ

import unimq


async def _pending(plain: Redis, dest: str, group: str) -> set[bytes]:
    entries: Any = await plain.xpending_range(dest, group, "-", "+", 10_000)
    return {entry["message_id"] for entry in entries}


async def _read_all_ahead(sub: Any) -> list[Any]:
    """Receive until nothing is left read ahead (the first read takes READ entries)."""
    got = list(await sub.receive(1000, 1.0))
    while sub._ahead:
        got += await sub.receive(1000, 1.0)
    return got


async def test_per_message_loop_reads_in_chunks(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    total = 3 * READ + 17
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send_many([b"%d" % i for i in range(total)])
    bodies = []
    async with rbroker.consumer(dest, "g", prefetch=1000) as consumer:
        buffer: Any = consumer._buffer
        async for delivery in consumer:
            assert len(buffer) < CHUNK  # one chunk at a time, not the whole prefetch
            bodies.append(delivery.message.body)
            await delivery.ack()
            if len(bodies) == total:
                break
    assert bodies == [b"%d" % i for i in range(total)]
    assert await _pending(plain, dest, "g") == set()


async def test_a_carried_read_survives_a_cancelled_receive(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send_many([b"%d" % i for i in range(2 * READ)])
    async with rbroker.consumer(dest, "g", prefetch=1000) as consumer:
        sub: Any = consumer.subscription
        got = await _read_all_ahead(sub)
        assert len(got) == READ
        acking = asyncio.create_task(sub.ack_many(got[:CHUNK]))
        await asyncio.sleep(0)
        assert sub._carried is not None  # the XACK carries the next read
        waiting = asyncio.create_task(sub.receive(1000, 1.0))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.wait_for(acking, 5)
        got += await sub.receive(1000, 1.0)
        assert [int(d.message.body) for d in got] == list(range(READ + CHUNK))
        await sub.ack_many(got[CHUNK:])
        assert not await _pending(plain, dest, "g") & {d.token for d in got}


async def test_a_read_in_flight_goes_back_on_close(rbroker: unimq.Broker, plain: Redis, dest: str) -> None:
    total = 2 * READ
    await rbroker.ensure(dest, groups=("g",))
    await rbroker.producer(dest).send_many([b"%d" % i for i in range(total)])
    consumer = await rbroker.consumer(dest, "g", prefetch=1000).open()
    sub: Any = consumer.subscription
    got = await _read_all_ahead(sub)  # held, the first chunk acked, the rest handed back on close
    acking = asyncio.create_task(sub.ack_many(got[:CHUNK]))
    await asyncio.sleep(0)
    assert sub._carried is not None
    await asyncio.wait_for(consumer.close(), 5)  # waits for the carried read, then hands back
    await asyncio.wait_for(acking, 5)
    async with rbroker.consumer(dest, "g", prefetch=1000) as other:
        rest = await other.receive_many(total - CHUNK, timeout=3)
        assert sorted(int(d.message.body) for d in rest) == list(range(CHUNK, total))
        await other.ack_many(rest)
    assert await _pending(plain, dest, "g") == set()
