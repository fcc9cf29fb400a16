"""Bad input at the core's edge (issue 22): every wrong duration, field or lifecycle call is a one-line
ConfigError, never a bare Python exception, a stuck message or a silent default. Generated inputs
(hypothesis) cover each class; the same classes run on real brokers in tests/hardening/."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unimq
from unimq.codecs import CONTENT_ENCODING
from unimq.reliability import DEAD_LETTER_REASON

BAD_DURATIONS = [float("nan"), float("inf"), -float("inf"), -1.0, -1e-9, "1", None, True, [1]]


@pytest.fixture
async def broker():
    async with unimq.connect(f"memory://inputs-{uuid.uuid4().hex[:6]}?lock_timeout=0.5") as b:
        yield b


async def one(broker: unimq.Broker, dest: str = "d") -> tuple[unimq.Consumer, unimq.Delivery]:
    consumer = await broker.consumer(dest).open()
    await broker.producer(dest).send(b"x")
    delivery = await consumer.receive(timeout=2)
    assert delivery is not None
    return consumer, delivery


def is_bad_duration(value: object, allow_zero: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        return True
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return math.isnan(seconds) or math.isinf(seconds) or seconds < 0 or (seconds == 0 and not allow_zero)


durations = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(min_value=-10, max_value=10),
    st.timedeltas(min_value=timedelta(seconds=-5), max_value=timedelta(seconds=5)),
    st.text(max_size=3), st.none(), st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=durations)
async def test_generated_durations_on_every_settlement_call(broker: unimq.Broker, value: object) -> None:
    consumer, delivery = await one(broker, f"dur-{uuid.uuid4().hex[:6]}")
    try:
        if value is not None and is_bad_duration(value, allow_zero=False):
            with pytest.raises(unimq.ConfigError):
                await delivery.extend(value)  # type: ignore[arg-type]
        if value is not None and is_bad_duration(value):
            with pytest.raises(unimq.ConfigError):
                await delivery.nack(delay=value)  # type: ignore[arg-type]
            with pytest.raises(unimq.ConfigError):
                await consumer.receive(timeout=value)  # type: ignore[arg-type]
            with pytest.raises(unimq.ConfigError):
                await broker.producer("x").send(b"y", delay=value)  # type: ignore[arg-type]
        if value is not None and is_bad_duration(value, allow_zero=False):
            with pytest.raises(unimq.ConfigError):
                await broker.producer("x").send(b"y", ttl=value)  # type: ignore[arg-type]
        assert not delivery.settled
        await delivery.ack()
    finally:
        await consumer.close()


@pytest.mark.parametrize("bad", BAD_DURATIONS)
async def test_receive_calls_refuse_bad_timeouts(broker: unimq.Broker, bad: object) -> None:
    async with broker.consumer("t") as consumer:
        for call in (lambda: consumer.receive_many(2, bad), lambda: consumer.receive_batch(2, bad)):  # type: ignore[arg-type]
            if bad is None:
                continue
            with pytest.raises(unimq.ConfigError):
                await call()


async def test_zero_timeout_returns_what_is_waiting(broker: unimq.Broker) -> None:
    await broker.ensure("z")
    await broker.producer("z").send_many([b"1", b"2", b"3"])
    async with broker.consumer("z") as consumer:
        first = await consumer.receive(timeout=0)
        assert first is not None
        many = await consumer.receive_many(5, 0)
        assert len(many) == 2
        assert await consumer.receive_batch(5, 0) == []


async def test_cancelled_receive_many_gives_back_what_it_took(broker: unimq.Broker) -> None:
    await broker.ensure("c")
    await broker.producer("c").send_many([b"1", b"2"])
    async with broker.consumer("c", prefetch=2) as consumer:
        for _ in range(5):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(consumer.receive_many(3, timeout=5), 0.1)
        got = await consumer.receive_many(2, 1)
        assert sorted(d.message.body for d in got) == [b"1", b"2"]


async def test_a_nan_delay_never_blocks_the_group(broker: unimq.Broker) -> None:
    consumer, delivery = await one(broker, "n")
    with pytest.raises(unimq.ConfigError):
        await delivery.nack(delay=float("nan"))
    await delivery.nack(delay=0.05)
    again = await consumer.receive(timeout=2)
    assert again is not None and again.attempt == 2
    await again.ack()
    await consumer.close()


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"key": ["k"]}, "key"),
        ({"key": 5}, "key"),
        ({"headers": "ab"}, "headers"),
        ({"headers": {"a": 1}}, "headers"),
        ({"priority": "5"}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": True}, "priority"),
        ({"correlation_id": 7}, "correlation_id"),
        ({"reply_to": b"r"}, "reply_to"),
        ({"content_type": 1.5}, "content_type"),
        ({"ttl": timedelta(0)}, "ttl"),
        ({"ttl": -3}, "ttl"),
        ({"delay": float("inf")}, "delay"),
    ],
)
async def test_bad_message_fields_are_config_errors_naming_the_field(broker: unimq.Broker, fields: dict[str, object],
                                                                     name: str) -> None:
    with pytest.raises(unimq.ConfigError, match=name):
        await broker.producer("f").send(b"x", **fields)  # type: ignore[arg-type]


async def test_a_message_object_with_bad_fields_is_refused_before_it_is_stored(broker: unimq.Broker) -> None:
    await broker.ensure("m")
    with pytest.raises(unimq.ConfigError, match="headers"):
        await broker.producer("m").send(unimq.Message(b"x", headers=None))  # type: ignore[arg-type]
    with pytest.raises(unimq.ConfigError, match="key"):
        await broker.producer("m").send_many([unimq.Message(b"x", key=["k"])])  # type: ignore[arg-type]
    assert (await broker.stats("m")).depth == 0


@pytest.mark.parametrize("spec", [{"deduplication": -1}, {"lock_timeout": float("nan")}, {"retention": 0},
                                  {"max_deliveries": 0}, {"partitions": "2"}])
async def test_bad_ensure_options(broker: unimq.Broker, spec: dict[str, object]) -> None:
    with pytest.raises((unimq.ConfigError, unimq.CapabilityError)):
        await broker.ensure("e", **spec)  # type: ignore[arg-type]


async def test_ensure_refuses_what_memory_cannot_honour_and_applies_the_lock(broker: unimq.Broker) -> None:
    for option in ({"partitions": 4}, {"fifo": True}, {"sessions": True}, {"replication": 3}):
        with pytest.raises(unimq.CapabilityError, match=next(iter(option))):
            await broker.ensure("x", **option)  # type: ignore[arg-type]
    await broker.ensure("x", lock_timeout=timedelta(seconds=0.2))
    await broker.producer("x").send(b"held")
    async with broker.consumer("x") as first, broker.consumer("x") as second:
        assert await first.receive(timeout=1) is not None
        again = await second.receive(timeout=1)
        assert again is not None, "the 0.2 s lock from ensure() was not applied"


async def test_empty_group_and_foreign_ack_many(broker: unimq.Broker) -> None:
    with pytest.raises(unimq.ConfigError, match="group"):
        broker.consumer("g", group="")
    consumer, delivery = await one(broker, "g")
    async with broker.consumer("g2") as other:
        with pytest.raises(unimq.ConfigError, match="this consumer"):
            await other.ack_many([delivery])
    await delivery.ack()
    await consumer.close()


async def test_connect_empty_string_is_a_config_error() -> None:
    for url in ("", "   "):
        with pytest.raises(unimq.ConfigError, match="empty"):
            await unimq.connect(url)


async def test_connect_without_url_uses_memory_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("UNIMQ_URL", raising=False)
    monkeypatch.setattr("unimq.broker._DEFAULT_LOGGED", False)
    with caplog.at_level("INFO", logger="unimq"):
        async with unimq.connect() as broker:
            assert broker.backend == "memory"
    assert "memory://" in caplog.text


async def test_reading_a_dead_letter_destination_never_bounces(broker: unimq.Broker) -> None:
    """A message dead-lettered for a bad content-encoding can be read back, by any codec."""
    await broker.ensure("b")
    await broker.producer("b").send(b"not gzip", headers={CONTENT_ENCODING: "gzip"})
    async with broker.consumer("b") as consumer:
        assert await consumer.receive(timeout=0.3) is None
    async with broker.consumer(broker.dead_letter_destination("b")) as dlq:
        got = await dlq.receive(timeout=1)
        assert got is not None
        assert "decode" in got.message.headers[DEAD_LETTER_REASON]
        assert got.payload == b"not gzip"
        await got.ack()
    assert (await broker.stats(broker.dead_letter_destination("b"))).dead_letter_depth == 0


async def test_a_bomb_is_dead_lettered_not_decompressed(broker: unimq.Broker) -> None:
    import gzip

    bomb = gzip.compress(bytes(8 * 1024 * 1024))
    await broker.ensure("z")
    await broker.producer("z").send(bomb, headers={CONTENT_ENCODING: "gzip"})
    async with broker.consumer("z", max_decoded_bytes=1024 * 1024) as consumer:
        assert await consumer.receive(timeout=0.3) is None
    assert (await broker.stats("z")).dead_letter_depth == 1


async def test_a_cancelled_close_still_closes_the_drivers_reader(
        broker: unimq.Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task cancelled while its consumer closes (on its way out of ``async with``) must not leave
    the driver's reader open: a Kafka reader's poll task ran on, committing for a deleted topic."""
    consumer = await broker.consumer("c").open()
    closed = asyncio.Event()
    flushing = asyncio.Event()

    async def slow_flush() -> None:  # acks still being sent when the cancellation comes
        flushing.set()
        await asyncio.sleep(10)

    async def close_reader() -> None:
        closed.set()

    monkeypatch.setattr(consumer._settlement, "flush", slow_flush)
    monkeypatch.setattr(consumer.subscription, "close", close_reader)
    closing = asyncio.create_task(consumer.close())
    await flushing.wait()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.wait_for(closed.wait(), 1)


@pytest.mark.parametrize("failure", ["cancelled", "raised"])
async def test_an_open_that_fails_half_way_closes_what_it_started(
        broker: unimq.Broker, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """A consumer's open() cancelled or failing after the driver started its client (a Kafka group
    member joining) must close that reader: it ran on, holding partitions and fetching for ever.
    The next open() reads through a fresh reader."""
    await broker.ensure("h")
    consumer = broker.consumer("h")
    first = consumer.subscription
    started = asyncio.Event()
    closed = asyncio.Event()

    async def half_open() -> None:
        started.set()
        if failure == "raised":
            raise unimq.BrokerConnectionError("the group join failed")
        await asyncio.sleep(10)

    async def close_reader() -> None:
        closed.set()

    monkeypatch.setattr(first, "open", half_open)
    monkeypatch.setattr(first, "close", close_reader)
    opening = asyncio.create_task(consumer.open())
    await started.wait()
    if failure == "cancelled":
        opening.cancel()
    with pytest.raises(asyncio.CancelledError if failure == "cancelled" else unimq.BrokerConnectionError):
        await opening
    await asyncio.wait_for(closed.wait(), 1)
    assert consumer.subscription is not first
    await broker.producer("h").send(b"after")
    async with consumer:
        delivery = await consumer.receive(timeout=1)
        assert delivery is not None and delivery.message.body == b"after"
        await delivery.ack()
