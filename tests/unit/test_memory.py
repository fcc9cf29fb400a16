"""memory:// semantics, flag by flag (the conformance suite runs the portable catalogue on it too)."""

import asyncio
import time
import uuid
from datetime import timedelta

import pytest

import unimq
from unimq.reliability import DEAD_LETTER_REASON


@pytest.fixture
async def broker():
    async with unimq.connect(f"memory://unit-{uuid.uuid4().hex[:6]}?lock_timeout=0.3") as b:
        yield b


async def drain(consumer: unimq.Consumer, wait: float = 0.3) -> list[unimq.Delivery]:
    out = []
    while (d := await consumer.receive(timeout=wait)) is not None:
        out.append(d)
        await d.ack()
    return out


async def test_fanout_and_competing(broker: unimq.Broker) -> None:
    await broker.ensure("t", groups=("a", "b"))
    await broker.producer("t").send_many([str(i).encode() for i in range(10)])
    async with broker.consumer("t", "a") as a1, broker.consumer("t", "a") as a2, broker.consumer("t", "b") as b:
        got_a = await drain(a1, 0.05) + await drain(a2, 0.05)
        got_b = await drain(b)
    assert sorted(d.message.body for d in got_a) == sorted(d.message.body for d in got_b)
    assert len(got_b) == 10


async def test_priority_ttl_delay_and_dedup(broker: unimq.Broker) -> None:
    await broker.ensure("p", deduplication=timedelta(seconds=60))
    p = broker.producer("p")
    await p.send(b"low", priority=1)
    await p.send(b"high", priority=9)
    await p.send(b"expired", ttl=timedelta(milliseconds=1))
    await p.send(b"later", delay=timedelta(milliseconds=300))
    await p.send(b"once", message_id="same")
    await p.send(b"twice", message_id="same")
    await asyncio.sleep(0.01)
    async with broker.consumer("p") as c:
        first = [d.message.body for d in await drain(c, 0.05)]
        assert first == [b"high", b"low", b"once"]
        started = time.monotonic()
        later = await c.receive(timeout=2)
        assert later is not None and later.message.body == b"later"
        assert time.monotonic() - started > 0.15


async def test_lock_expiry_extend_and_attempts(broker: unimq.Broker) -> None:
    await broker.producer("l").send(b"x")
    await broker.producer("l").send(b"y")
    async with broker.consumer("l", prefetch=1) as c:
        x = await c.receive(timeout=1)
        assert x is not None and x.attempt == 1
    async with broker.consumer("l", prefetch=3) as c:
        got = {d.message.body: d for d in await c.receive_many(2, timeout=1)}
        assert got[b"x"].attempt == 2  # the close released it
        await got[b"x"].extend(timedelta(seconds=5))
        again = await c.receive(timeout=0.6)  # y's lock (0.3 s) expires; x is extended
        assert again is not None and again.message.body == b"y" and again.attempt == 2
        await again.ack()
        await got[b"x"].ack()


async def test_per_key_order_across_consumers(broker: unimq.Broker) -> None:
    await broker.producer("k").send_many([unimq.Message(f"{k}{i}".encode(), key=k) for i in range(20) for k in "ab"])
    seen: dict[str, list[int]] = {"a": [], "b": []}

    async def worker() -> None:
        async with broker.consumer("k", prefetch=3) as c:
            while (d := await c.receive(timeout=0.2)) is not None:
                seen[d.message.key].append(int(d.message.body[1:]))  # type: ignore[index]
                await asyncio.sleep(0)
                await d.ack()

    await asyncio.gather(worker(), worker())
    assert seen == {"a": list(range(20)), "b": list(range(20))}


async def test_reject_nack_delay_and_max_deliveries(broker: unimq.Broker) -> None:
    await broker.ensure("r", max_deliveries=2)
    await broker.producer("r").send_many([b"poison", b"retry"])
    async with broker.consumer("r") as c:
        for d in await c.receive_many(2, timeout=1):
            if d.message.body == b"poison":
                await d.reject("bad input")
            else:
                await d.nack(delay=timedelta(milliseconds=100))
        d = await c.receive(timeout=1)
        assert d is not None and d.message.body == b"retry" and d.attempt == 2
        await d.nack()
        assert await c.receive(timeout=0.2) is None  # third delivery exceeds max_deliveries
    async with broker.consumer("r.dlq") as dlq:
        reasons = sorted(d.message.headers[DEAD_LETTER_REASON] for d in await drain(dlq))
    assert reasons == ["bad input", "delivered 2 times without an ack"]


async def test_backpressure_bounds_unsettled(broker: unimq.Broker) -> None:
    await broker.producer("bp").send_many([b"x"] * 10)
    async with broker.consumer("bp", prefetch=3) as c:
        held = await c.receive_many(10, timeout=0.3)
        assert len(held) == 3
        await held[0].ack()
        assert await c.receive(timeout=0.3) is not None


async def test_peek_stats_destinations_delete_and_named_isolation(broker: unimq.Broker) -> None:
    await broker.ensure("s")
    await broker.producer("s").send_many([b"1", b"2", b"3"])
    assert [m.body for m in await broker.peek("s", 2)] == [b"1", b"2"]
    stats = await broker.stats("s")
    assert stats.depth == 3 and stats.in_flight == 0 and stats.dead_letter_depth == 0
    assert "s" in await broker.destinations()
    async with unimq.connect("memory://another-app") as other:
        assert "s" not in await other.destinations()
    await broker.delete("s")
    assert "s" not in await broker.destinations()


async def test_auto_create_off_gives_not_found() -> None:
    async with unimq.connect("memory://strict?auto_create=false") as broker:
        with pytest.raises(unimq.PublishError) as info:
            await broker.producer("missing").send(b"x")
        assert isinstance(info.value.results[0], unimq.NotFound)
        with pytest.raises(unimq.NotFound):
            await broker.consumer("missing").open()


async def test_closed(broker: unimq.Broker) -> None:
    consumer = broker.consumer("c")
    await consumer.open()
    await consumer.close()
    with pytest.raises(unimq.Closed):
        await consumer.receive(timeout=0)
    await broker.close()
    with pytest.raises(unimq.Closed):
        broker.producer("c")


async def test_ack_many_settles_each_once(broker: unimq.Broker) -> None:
    await broker.producer("am").send_many([b"1", b"2", b"3"])
    async with broker.consumer("am", prefetch=3) as c:
        got = await c.receive_many(3, timeout=1)
        await got[0].ack()
        await c.ack_many(got)  # the already-acked one is skipped
        assert all(d.settled for d in got)
        assert await c.receive(timeout=0.4) is None  # nothing redelivered after the lock (0.3 s)
    assert (await broker.stats("am")).in_flight == 0


async def test_receive_batch_returns_what_is_buffered_without_waiting_to_fill(broker: unimq.Broker) -> None:
    await broker.producer("rb").send_many([b"1", b"2", b"3"])
    async with broker.consumer("rb", prefetch=10) as c:
        started = time.monotonic()
        batch = await c.receive_batch(10, timeout=5)
        assert [d.message.body for d in batch] == [b"1", b"2", b"3"]
        assert time.monotonic() - started < 1  # did not wait out the timeout to fill 10
        await c.ack_many(batch)
        assert await c.receive_batch(10, timeout=0.1) == []
    async with broker.consumer("rb") as c:
        assert await c.receive(timeout=0.4) is None  # the batch ack settled all three


async def test_every_task_waiting_for_room_wakes_on_a_settlement(broker: unimq.Broker) -> None:
    await broker.producer("room").send_many([b"1", b"2", b"3"])
    async with broker.consumer("room", prefetch=1) as c:
        first = await c.receive(timeout=1)
        assert first is not None
        started = time.monotonic()
        waiters = [asyncio.create_task(c.receive(timeout=3)) for _ in range(2)]
        await asyncio.sleep(0.05)  # both wait for room
        await first.ack()
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        got = done.pop().result()
        assert got is not None
        await got.ack()
        last = await pending.pop()
        assert last is not None and {got.message.body, last.message.body} == {b"2", b"3"}
        assert time.monotonic() - started < 1.5  # neither waited out its timeout


def test_a_group_copy_keeps_every_field_with_headers_of_its_own() -> None:
    """The positional copy each further group gets must follow Message's field order."""
    import dataclasses
    from datetime import UTC, datetime

    from unimq.memory import _group_copy
    from unimq.message import Message

    values = {"body": b"b", "key": "k", "headers": {"h": "1"}, "message_id": "id", "correlation_id": "c",
              "reply_to": "r", "content_type": "t", "timestamp": datetime.now(UTC), "delay": timedelta(seconds=1),
              "ttl": timedelta(seconds=2), "priority": 3}
    assert [f.name for f in dataclasses.fields(Message)] == list(values)
    original = Message(**values)
    copy = _group_copy(original)
    assert copy == original
    assert copy.headers is not original.headers


async def test_plain_and_prioritised_messages_keep_one_order_through_peek_nack_and_delay(broker: unimq.Broker) -> None:
    """Plain messages are queued a publish call at a time and the rest (priority, delay,
    redeliveries) on a heap: receive and peek merge them by priority, then send order, and a
    nacked message comes back at its place (orders recorded from the one-heap implementation)."""
    await broker.ensure("m", max_priority=9)
    p = broker.producer("m")
    await p.send_many([b"a", b"b"])
    await p.send(b"p5", priority=5)
    await p.send(b"c")
    await p.send(b"p1", priority=1)
    await p.send_many([b"d", b"e"])
    await p.send(b"p5b", priority=5)
    assert [m.body for m in await broker.peek("m", 10)] == [b"p5", b"p5b", b"p1", b"a", b"b", b"c", b"d", b"e"]
    async with broker.consumer("m", prefetch=1) as consumer:
        first = await consumer.receive(timeout=1)
        assert first is not None and first.message.body == b"p5"
        await first.nack()
        got = [(d.message.body, d.attempt) for d in await drain(consumer, 0.1)]
    assert got == [(b"p5", 2), (b"p5b", 1), (b"p1", 1), (b"a", 1), (b"b", 1), (b"c", 1), (b"d", 1), (b"e", 1)]

    await p.send_many([b"f", b"g", b"h"])
    await p.send(b"later", delay=0.2)
    await p.send_many([b"i"])
    async with broker.consumer("m", prefetch=2) as consumer:
        f, g = await consumer.receive(timeout=1), await consumer.receive(timeout=1)
        assert f is not None and g is not None
        await g.nack()
        await f.ack()
        got = [(d.message.body, d.attempt) for d in await drain(consumer, 0.5)]
    assert got == [(b"g", 2), (b"h", 1), (b"i", 1), (b"later", 1)]
