"""Honesty: an option the backend declares ``none`` (or beyond its limit) raises CapabilityError.

The other tests check that supported options work; these check the opposite, so an option is never
silently dropped. Each is skipped, with the reason, where the backend supports the flag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest

import unimq
from unimq.testing.brokers import Target, Timing
from unimq.testing.conformance.support import queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio

Use = Callable[[unimq.Broker, Names, Timing, float], Awaitable[object]]


@asynccontextmanager
async def _held(broker: unimq.Broker, names: Names, timing: Timing) -> AsyncIterator[unimq.Delivery]:
    """A received, unsettled delivery; after the refused settlement it must still be unsettled (then acked)."""
    dest, group = await queue(broker, names)
    async with broker.consumer(dest, group) as consumer:
        await broker.producer(dest).send(b"held")
        delivery = await consumer.receive(timeout=timing.receive)
        assert delivery is not None, "the message never arrived"
        yield delivery
        assert not delivery.settled, "a refused settlement must leave the message unsettled"
        await delivery.ack()


async def _delay(broker: unimq.Broker, names: Names, timing: Timing, seconds: float) -> None:
    await broker.producer(names.dest).send(b"x", delay=timedelta(seconds=seconds))


async def _ttl(broker: unimq.Broker, names: Names, timing: Timing, seconds: float) -> None:
    await broker.producer(names.dest).send(b"x", ttl=timedelta(seconds=seconds))


async def _priority(broker: unimq.Broker, names: Names, timing: Timing, value: float) -> None:
    await broker.producer(names.dest).send(b"x", priority=int(value))


async def _nack_delay(broker: unimq.Broker, names: Names, timing: Timing, seconds: float) -> None:
    async with _held(broker, names, timing) as delivery:
        with pytest.raises(unimq.CapabilityError) as refused:
            await delivery.nack(delay=timedelta(seconds=seconds))
    raise refused.value


async def _reject(broker: unimq.Broker, names: Names, timing: Timing, _: float) -> None:
    async with _held(broker, names, timing) as delivery:
        with pytest.raises(unimq.CapabilityError) as refused:
            await delivery.reject(reason="refused")
    raise refused.value


async def _extend(broker: unimq.Broker, names: Names, timing: Timing, seconds: float) -> None:
    async with _held(broker, names, timing) as delivery:
        with pytest.raises(unimq.CapabilityError) as refused:
            await delivery.extend(timedelta(seconds=seconds))
    raise refused.value


async def _peek(broker: unimq.Broker, names: Names, timing: Timing, _: float) -> None:
    await broker.ensure(names.dest)
    await broker.peek(names.dest)


async def _dedup(broker: unimq.Broker, names: Names, timing: Timing, _: float) -> None:
    await broker.ensure(names.dest, deduplication=timedelta(minutes=1))


async def _replay(broker: unimq.Broker, names: Names, timing: Timing, _: float) -> None:
    broker.consumer(names.dest, start="earliest")


async def _headers(broker: unimq.Broker, names: Names, timing: Timing, _: float) -> None:
    await broker.producer(names.dest).send(b"x", headers={"k": "v"})


async def _fanout(broker: unimq.Broker, names: Names, timing: Timing, _: float) -> None:
    broker.consumer(names.dest, names.group())


async def _max_priority(broker: unimq.Broker, names: Names, timing: Timing, _: float) -> None:
    await broker.ensure(names.dest, max_priority=5)


#: flag → the uses of its option (the value is a number within, or just beyond, the flag's limit).
USES: dict[str, list[Use]] = {
    "delayed_delivery": [_delay],
    "message_ttl": [_ttl],
    "priority": [_priority, _max_priority],
    "nack_delay": [_nack_delay],
    "dead_letter": [_reject],
    "lock_extension": [_extend],
    "peek": [_peek],
    "deduplication": [_dedup],
    "replay": [_replay],
    "headers": [_headers],
    "fanout": [_fanout],
}

LIMITED = ["delayed_delivery", "message_ttl", "priority", "nack_delay"]


@pytest.mark.parametrize("flag", list(USES))
async def test_unsupported_option_refused(flag: str, broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                          unimq_target: Target, timing: Timing) -> None:
    if caps.supports(flag):
        pytest.skip(f"{unimq_target.name}: capability '{flag}' is {getattr(caps, flag).support.value}; "
                    "nothing to refuse")
    for use in USES[flag]:
        with pytest.raises(unimq.CapabilityError, match=flag):
            await use(broker, names, timing, 1)


@pytest.mark.parametrize("flag", LIMITED)
async def test_option_beyond_limit_refused(flag: str, broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                           unimq_target: Target, timing: Timing) -> None:
    feature: unimq.Feature = getattr(caps, flag)
    if feature.limit is None:
        pytest.skip(f"{unimq_target.name}: capability '{flag}' is {feature.support.value} with no declared limit")
    with pytest.raises(unimq.CapabilityError, match=flag):
        await USES[flag][0](broker, names, timing, feature.limit + 1)
