"""JetStream mapping details and the core-NATS (at-most-once) mode, on a real nats-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats_support import free_port, private_server
from unimq_nats.mapping import stream_name
from unimq_nats.transport import READ_SIZE, LargeReadTransport

import unimq
from unimq.reliability import DEAD_LETTER_REASON

#: The nats-server scripts/brokers builds; the private servers below run it.


async def test_nack_delay_is_honoured_by_the_server(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest, groups=("g",))
    await broker.producer(dest).send(b"x")
    async with broker.consumer(dest, "g") as consumer:
        first = await consumer.receive(timeout=5)
        assert first is not None
        started = time.monotonic()
        await first.nack(delay=timedelta(seconds=1.5))
        again = await consumer.receive(timeout=5)
        assert again is not None and again.attempt == 2
        assert time.monotonic() - started >= 1.4
        await again.ack()


async def test_extend_beyond_ack_wait_keeps_the_lock(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest, groups=("g",))
    await broker.producer(dest).send(b"x")
    async with broker.consumer(dest, "g", lock_timeout=1) as holder, broker.consumer(dest, "g") as other:
        held = await holder.receive(timeout=5)
        assert held is not None
        await held.extend(timedelta(seconds=3))
        assert await other.receive(timeout=2.5) is None
        await held.ack()


async def test_lock_timeout_expiry_redelivers_and_updates_ack_wait(broker: unimq.Broker, raw: Client,
                                                                  dest: str) -> None:
    await broker.ensure(dest, groups=("g",), lock_timeout=timedelta(seconds=20))
    await broker.producer(dest).send(b"x")
    async with broker.consumer(dest, "g", lock_timeout=1) as consumer:
        info = await raw.jetstream().consumer_info(stream_name(dest), "g")
        assert info.config.ack_wait == 1
        first = await consumer.receive(timeout=5)
        assert first is not None
        again = await consumer.receive(timeout=5)  # never settled: back after ack_wait
        assert again is not None and again.attempt == 2
        await again.ack()


async def test_max_deliveries_dead_letters_with_reason(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest, groups=("g",), max_deliveries=2)
    await broker.producer(dest).send(b"poison")
    async with broker.consumer(dest, "g") as consumer:
        for attempt in (1, 2):
            delivery = await consumer.receive(timeout=5)
            assert delivery is not None and delivery.attempt == attempt
            await delivery.nack()
        assert await consumer.receive(timeout=1) is None
    async with broker.consumer(broker.dead_letter_destination(dest)) as dlq:
        dead = await dlq.receive(timeout=5)
        assert dead is not None and dead.message.body == b"poison"
        assert "2 times" in dead.message.headers[DEAD_LETTER_REASON]
        await dead.ack()
    stats = await broker.stats(dest, "g")
    assert stats.depth == 0 and stats.in_flight == 0 and stats.dead_letter_depth == 0


async def test_reject_terms_and_copies(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest, groups=("g",))
    await broker.producer(dest).send(b"bad", message_id="id-7")
    async with broker.consumer(dest, "g") as consumer:
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None
        await delivery.reject("schema mismatch")
        assert await consumer.receive(timeout=1) is None
    assert (await broker.stats(dest, "g")).dead_letter_depth == 1
    async with broker.consumer(broker.dead_letter_destination(dest)) as dlq:
        dead = await dlq.receive(timeout=5)
        assert dead is not None and dead.message.message_id == "id-7"
        assert dead.message.headers[DEAD_LETTER_REASON] == "schema mismatch"
        await dead.ack()


async def test_deduplication_by_message_id(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest, groups=("g",), deduplication=timedelta(minutes=1))
    producer = broker.producer(dest)
    await producer.send(b"once", message_id="same")
    await producer.send(b"once", message_id="same")
    async with broker.consumer(dest, "g") as consumer:
        first = await consumer.receive(timeout=5)
        assert first is not None and first.message.message_id == "same"
        assert first.native.headers["Nats-Msg-Id"] == "same"
        await first.ack()
        assert await consumer.receive(timeout=1) is None


async def test_delay_and_ttl_emulations(broker: unimq.Broker, dest: str) -> None:
    await broker.ensure(dest, groups=("g",))
    producer = broker.producer(dest)
    sent = time.monotonic()
    await producer.send(b"later", delay=timedelta(seconds=1.5))
    await producer.send(b"stale", ttl=timedelta(milliseconds=200))
    await producer.send(b"fresh", ttl=timedelta(minutes=5))
    await asyncio.sleep(0.4)
    assert [m.body for m in await broker.peek(dest, 10)] == [b"fresh"]
    async with broker.consumer(dest, "g") as consumer:
        fresh = await consumer.receive(timeout=5)
        assert fresh is not None and fresh.message.body == b"fresh"
        assert fresh.message.ttl is not None
        await fresh.ack()
        later = await consumer.receive(timeout=5)
        assert later is not None and later.message.body == b"later"
        assert time.monotonic() - sent >= 1.4
        assert later.attempt == 1  # the deferral is not an attempt
        await later.ack()


async def test_start_positions(broker: unimq.Broker, dest: str) -> None:
    producer = broker.producer(dest)
    await producer.send_many([b"one", b"two"])
    async with broker.consumer(dest, "late", start="latest") as latest:
        assert await latest.receive(timeout=0.5) is None
        await producer.send(b"three")
        got = await latest.receive(timeout=5)
        assert got is not None and got.message.body == b"three"
        await got.ack()
    async with broker.consumer(dest, "from2", start=2) as by_seq:
        got = await by_seq.receive(timeout=5)
        assert got is not None and got.message.body == b"two"


async def test_stats_destinations_delete(broker: unimq.Broker, raw: Client, dest: str) -> None:
    await broker.ensure(dest, groups=("a", "b"))
    await broker.producer(dest).send_many([b"1", b"2", b"3"])
    async with broker.consumer(dest, "a") as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None
        stats = await broker.stats(dest, "a")
        # prefetched messages are delivered to this consumer, so they count as in flight
        assert stats.in_flight is not None and stats.in_flight >= 1 and stats.depth == 3 - stats.in_flight
    assert (await broker.stats(dest, "b")).depth == 3
    assert {dest, f"{dest}.dlq"} <= set(await broker.destinations())
    await broker.delete(dest)
    assert dest not in await broker.destinations()


async def test_max_deliveries_is_read_by_a_process_that_did_not_ensure(broker: unimq.Broker, dest: str,
                                                                       nats_url: str) -> None:
    """The limit lives in the durable's description: a fresh Broker that never ensured dead-letters too."""
    await broker.ensure(dest, groups=("g",), max_deliveries=2)
    await broker.producer(dest).send(b"poison")
    async with unimq.connect(nats_url) as other:
        async with other.consumer(dest, "g") as consumer:
            for attempt in (1, 2):
                delivery = await consumer.receive(timeout=5)
                assert delivery is not None and delivery.attempt == attempt
                await delivery.nack()
            assert await consumer.receive(timeout=1) is None, "delivered past max_deliveries=2"
        async with other.consumer(other.dead_letter_destination(dest)) as dlq:
            dead = await dlq.receive(timeout=5)
            assert dead is not None and dead.message.body == b"poison"
            await dead.ack()


async def test_messages_held_at_close_come_back_at_once_and_once(broker: unimq.Broker, dest: str) -> None:
    """Consumer A holds 3 (and has one more fetched, not handed out) with its pull request still open;
    after close, B gets each of the 3 + 1 once, at once, as the next attempt (not after ack_wait)."""
    await broker.ensure(dest, groups=("g",))
    await broker.producer(dest).send_many([b"m1", b"m2", b"m3", b"m4", b"m5"])
    async with broker.consumer(dest, "g", lock_timeout=30) as first:
        taken = [await first.receive(timeout=5) for _ in range(4)]
        assert all(taken)
        await taken[0].ack()  # type: ignore[union-attr]
        started = time.monotonic()
    assert time.monotonic() - started < 0.5, "close waited too long"
    closed = time.monotonic()
    got = []
    async with broker.consumer(dest, "g", lock_timeout=30) as second:
        while (delivery := await second.receive(timeout=1.5)) is not None:
            got.append((delivery.message.body, delivery.attempt))
            await delivery.ack()
    assert sorted(body for body, _ in got) == [b"m2", b"m3", b"m4", b"m5"], got
    assert all(attempt == 2 for body, attempt in got if body != b"m5"), got
    assert time.monotonic() - closed < 5, "held messages waited out ack_wait"


async def test_a_close_cancelled_midway_leaves_the_connection_working(broker: unimq.Broker, dest: str) -> None:
    """nats-py kills its read loop when a PONG arrives for a cancelled flush: close() must shield its
    drain, so cancelling a closing consumer (a cancelled task leaving ``async with``) breaks nothing."""
    await broker.ensure(dest, groups=("g",))
    for steps in range(12):
        consumer = await broker.consumer(dest, "g").open()
        closing = asyncio.create_task(consumer.close())
        for _ in range(steps):
            await asyncio.sleep(0)
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
    await broker.producer(dest).send(b"still works")
    async with broker.consumer(dest, "g") as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None and got.message.body == b"still works"
        await got.ack()


@pytest.fixture
def secured_server(tmp_path: Path) -> Iterator[int]:
    """A private nats-server with a user/password account and one that may not publish to ``denied.>``."""
    port = free_port()
    (tmp_path / "nats.conf").write_text(
        f'host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: "{tmp_path / "js"}", max_file_store: 64MB }}\n'
        'authorization { users: [ {user: alice, password: "right-pw"},\n'
        '  {user: bob, password: "bob-pw", permissions: {publish: {deny: ["denied.>"]}}} ] }\n'
    )
    with private_server(["-c", str(tmp_path / "nats.conf")], port, tmp_path / "nats.log"):
        yield port


async def test_credentials_and_permissions_are_classified(secured_server: int) -> None:
    port = secured_server
    with pytest.raises(unimq.AuthenticationError) as wrong:
        await unimq.connect(f"nats://alice:wrong-pw@127.0.0.1:{port}?jetstream=false&connect_attempts=1")
    assert not wrong.value.retryable and "wrong-pw" not in str(wrong.value)
    async with unimq.connect(f"nats://bob:bob-pw@127.0.0.1:{port}?jetstream=false") as bob:
        await bob.producer("allowed.x").send(b"ok")
        with pytest.raises(unimq.PublishError) as denied:  # reported by the server before its reply to the flush
            await bob.producer("denied.x").send(b"no")
        assert isinstance(denied.value.results[0], unimq.PermissionDenied), denied.value.results
        assert not denied.value.retryable


async def test_errors_are_mapped() -> None:
    with pytest.raises(unimq.BrokerConnectionError):
        await unimq.connect("nats://127.0.0.1:1?connect_attempts=1&connect_timeout=0.5")
    with pytest.raises(unimq.ConfigError, match="bogus"):
        await unimq.connect("nats://127.0.0.1:4222?bogus=1")
    async with unimq.connect("nats://127.0.0.1:4222") as broker:
        with pytest.raises(unimq.PublishError, match="not a literal NATS subject") as bad:
            await broker.producer("bad subject.*").send(b"x")
        assert isinstance(bad.value.results[0], unimq.ConfigError)
        with pytest.raises(unimq.ConfigError, match="subject"):
            broker.consumer("orders.>")
        with pytest.raises(unimq.NotFound):
            await broker.stats(f"nope.{uuid.uuid4().hex}")
        with pytest.raises(unimq.CapabilityError):
            await broker.producer("x.y").send(b"x", priority=3)


async def test_secrets_never_printed() -> None:
    with pytest.raises(unimq.UnimqError) as info:
        await unimq.connect("nats://bob:hunter22@127.0.0.1:1?token=tok-secret-1&connect_attempts=1"
                            "&connect_timeout=0.5")
    text = str(info.value) + repr(info.value)
    assert "hunter22" not in text and "tok-secret-1" not in text


# Core NATS: at-most-once, flags say so.

async def test_core_flags(core: unimq.Broker) -> None:
    caps = core.capabilities
    assert caps.backend == "nats-core"
    for flag in ("persistence", "nack_delay", "dead_letter", "deduplication", "replay", "lock_extension", "peek"):
        assert not caps.supports(flag), flag
    assert caps.fanout and caps.competing_consumers


async def test_core_fanout_and_queue_groups(core: unimq.Broker) -> None:
    dest = f"ut.core.{uuid.uuid4().hex[:8]}"
    async with core.consumer(dest, "a") as a1, core.consumer(dest, "a") as a2, core.consumer(dest, "b") as b:
        for c in (a1, a2, b):
            await c.open()
        await core.producer(dest).send_many([f"m{i}".encode() for i in range(20)])
        got_b = await b.receive_many(20, 3)
        got_a1 = await a1.receive_many(20, 1)
        got_a2 = await a2.receive_many(20, 0.5)
        assert len(got_b) == 20
        assert len(got_a1) + len(got_a2) == 20 and got_a1 and got_a2
        await got_b[0].ack()  # a no-op, allowed
        with pytest.raises(unimq.CapabilityError, match="redeliver"):
            await got_b[1].nack()
        with pytest.raises(unimq.CapabilityError):
            await got_b[2].reject("x")


async def test_core_is_at_most_once(core: unimq.Broker) -> None:
    dest = f"ut.core.{uuid.uuid4().hex[:8]}"
    await core.producer(dest).send(b"nobody listening")
    async with core.consumer(dest, "g") as consumer:
        assert await consumer.receive(timeout=0.5) is None
    with pytest.raises(unimq.CapabilityError):
        await core.ensure(dest, groups=("g",), max_deliveries=3)


async def test_request_replies_come_back_on_a_core_inbox(broker: unimq.Broker, dest: str, nats_url: str) -> None:
    """request() reads replies on a core-NATS inbox: no reply stream is made, nothing is left to sweep."""
    await broker.ensure(dest)
    before = set(await broker.destinations())
    seen: list[str] = []

    async with unimq.connect(nats_url) as responder, responder.consumer(dest) as requests:

        async def answer() -> None:
            delivery = await requests.receive(timeout=5)
            assert delivery is not None, "the request never arrived"
            seen.append(delivery.message.reply_to or "")
            await delivery.reply(b"pong")
            await delivery.ack()

        task = asyncio.create_task(answer())
        reply = await broker.request(dest, b"ping", timeout=5)
        await task
    assert reply.body == b"pong"
    assert seen[0].startswith("_INBOX."), seen
    assert set(await broker.destinations()) == before, "a reply destination was created"


async def test_the_connection_reads_large_messages_in_large_reads(broker: unimq.Broker, dest: str) -> None:
    """The driver's transport (nats-py takes one only through a private attribute) is in use: if a
    nats-py release stopped honouring it, 64 KiB consume would lose about a quarter of its CPU
    silently (docs/backends/nats.md). Messages larger than one read still arrive whole."""
    assert isinstance(broker.native._transport, LargeReadTransport)
    await broker.ensure(dest)
    bodies = [bytes([i]) * (READ_SIZE + 70_000) for i in range(3)]
    await broker.producer(dest).send_many(bodies)
    async with broker.consumer(dest) as consumer:
        received = await consumer.receive_many(3, timeout=10)
        await consumer.ack_many(received)
    assert [d.message.body for d in received] == bodies
