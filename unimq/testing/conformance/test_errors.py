"""Errors and escape hatches: size limits before the network, NotFound, require=, native objects."""

from __future__ import annotations

import asyncio

import pytest

import unimq
from unimq.testing.brokers import Target, Timing
from unimq.testing.conformance.support import collect, collect_all, expect_nothing, oversize, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio


async def test_oversize_body_refused_before_sending(broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                                    timing: Timing) -> None:
    dest, group = await queue(broker, names)
    with pytest.raises(unimq.MessageTooLarge) as refused:
        await broker.producer(dest).send(oversize(caps))
    assert str(caps.max_message_bytes) in str(refused.value), "the error states the limit"
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(b"marker")
        await collect_all(consumer, [b"marker"], timing)
        await expect_nothing(consumer, timing, "the oversize message was sent anyway")


async def test_send_to_missing_destination_raises_not_found(broker: unimq.Broker, names: Names,
                                                            unimq_target: Target) -> None:
    """Where destinations are not auto-created: every message of the batch fails with NotFound.

    This also checks the shape of PublishError: ``messages`` and ``results`` per message.
    """
    missing = names()
    batch = [b"1", b"2", b"3"]
    try:
        await broker.producer(missing, retry=None).send_many(batch)
    except unimq.PublishError as exc:
        assert [m.body for m in exc.messages] == batch
        assert len(exc.results) == 3
        assert all(isinstance(r, unimq.NotFound) for r in exc.results), exc.results
        assert len(exc.failed) == 3
        assert not exc.retryable, "a missing destination will not appear by retrying"
        return
    pytest.skip(f"{unimq_target.name}: sending to a destination never ensured succeeded (it auto-creates)")


async def test_receive_from_missing_destination_raises_not_found(broker: unimq.Broker, names: Names,
                                                                 unimq_target: Target, timing: Timing) -> None:
    """Where destinations are not auto-created, reading one fails with NotFound, not a timeout (or,
    where the broker made it on first use but it cannot be read as asked — a plain queue read
    with sessions=true — a ConfigError naming it)."""
    name = names()
    consumer = broker.consumer(name)
    try:
        await consumer.receive(timeout=timing.quiet)
    except unimq.NotFound:
        return
    except unimq.ConfigError as exc:
        assert name in str(exc), exc
        return
    finally:
        await consumer.close()
    pytest.skip(f"{unimq_target.name}: reading a destination never ensured did not fail (it auto-creates)")


async def test_escape_hatches(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """broker.native is the client and delivery.native the raw message, for every backend."""
    assert broker.native is not None
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(b"native")
        [delivery] = await collect(consumer, 1, timing)
    assert delivery.native is not None


async def test_require_is_checked_at_connect(unimq_url: str, broker: unimq.Broker, timing: Timing) -> None:
    """connect(require=...) fails with CapabilityError naming a flag that is none, and succeeds otherwise."""
    caps = broker.capabilities
    lacking = [f for f in caps.flag_names() if not caps.supports(f)]
    having = {f for f in caps.flag_names() if caps.supports(f)}
    if lacking:
        with pytest.raises(unimq.CapabilityError, match=lacking[0]):
            await unimq.connect(unimq_url, require={lacking[0]})
    async with asyncio.timeout(timing.receive), unimq.connect(unimq_url, require=having) as other:
        assert other.capabilities == caps


async def test_capabilities_declaration(broker: unimq.Broker, caps: unimq.Capabilities) -> None:
    """The declaration is well-formed: JSON round trip, positive limits, a backend name."""
    assert caps.backend
    assert unimq.Capabilities.model_validate_json(caps.to_json()) == caps
    assert caps.max_message_bytes > 0
    for flag in caps.flag_names():
        feature = getattr(caps, flag)
        if isinstance(feature, unimq.Feature) and feature.limit is not None:
            assert feature.limit > 0, f"{flag} has a non-positive limit {feature.limit}"
            assert feature, f"{flag} is 'none' but declares a limit"
    assert caps.backend in str(caps)
