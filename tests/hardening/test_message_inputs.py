"""Issue 22's message and lifecycle classes on real brokers: generated messages, valid ones round-trip
byte-identical and invalid ones are refused before anything is stored; generated durations never
leave a message stuck. Runs on memory:// and two real backends (Redis Streams, RabbitMQ)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unimq

TARGETS = ["memory", "redis", "rabbitmq"]

header_names = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=16)
valid = st.fixed_dictionaries({
    "body": st.binary(max_size=256),
    "key": st.none() | st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=12),
    "headers": st.dictionaries(header_names.map(lambda n: f"h-{n}"), header_values, max_size=4),
    "correlation_id": st.none() | st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=12),
})
invalid = st.sampled_from([
    {"key": ["k"]}, {"headers": "ab"}, {"headers": {"a": 1}}, {"priority": "5"}, {"ttl": timedelta(0)},
    {"ttl": -1.0}, {"delay": float("nan")}, {"correlation_id": 3}, {"reply_to": b"x"},
])


@pytest.fixture(params=TARGETS)
async def broker(request: pytest.FixtureRequest, broker_url) -> AsyncIterator[unimq.Broker]:
    target = request.param
    url = f"memory://hardening-{uuid.uuid4().hex[:6]}" if target == "memory" else broker_url(target)
    async with unimq.connect(url) as connected:
        yield connected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=valid, bad=invalid)
async def test_generated_messages_round_trip_or_are_refused(broker: unimq.Broker, fields: dict[str, object],
                                                            bad: dict[str, object]) -> None:
    dest = f"hardening-{uuid.uuid4().hex[:8]}"
    await broker.ensure(dest)
    try:
        producer = broker.producer(dest)
        with pytest.raises(unimq.ConfigError):
            await producer.send(b"never stored", **bad)  # type: ignore[arg-type]
        sent = await producer.send(fields["body"], key=fields["key"], headers=fields["headers"],  # type: ignore[arg-type]
                                   correlation_id=fields["correlation_id"])  # type: ignore[arg-type]
        async with broker.consumer(dest) as consumer:
            got = await consumer.receive(timeout=10)
            assert got is not None
            await got.ack()
            extra = await consumer.receive(timeout=0.2)
        assert extra is None, "the refused message was stored"
        m = got.message
        assert (m.body, m.key, m.message_id, m.correlation_id) == (
            sent.body, sent.key, sent.message_id, sent.correlation_id)
        for name, value in sent.headers.items():
            assert m.headers.get(name) == value
    finally:
        await broker.delete(dest)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delay=st.sampled_from([float("nan"), float("inf"), -1.0, "1"]), extend=st.sampled_from([-1, 0, float("nan")]))
async def test_bad_durations_leave_the_message_deliverable(broker: unimq.Broker, delay: object,
                                                           extend: object) -> None:
    dest = f"hardening-{uuid.uuid4().hex[:8]}"
    await broker.ensure(dest)
    try:
        await broker.producer(dest).send(b"kept")
        async with broker.consumer(dest) as consumer:
            got = await consumer.receive(timeout=10)
            assert got is not None
            with pytest.raises(unimq.ConfigError):
                await got.nack(delay=delay)  # type: ignore[arg-type]
            if broker.capabilities.lock_extension:
                with pytest.raises(unimq.ConfigError):
                    await got.extend(extend)  # type: ignore[arg-type]
            await got.nack()
            again = await consumer.receive(timeout=10)
            assert again is not None and again.message.body == b"kept"
            await again.ack()
    finally:
        await asyncio.wait_for(broker.delete(dest), 10)
