"""Helpers shared by the conformance tests. Public API only; every wait is bounded by ``Timing``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import pytest

import unimq
from unimq.testing.brokers import Timing
from unimq.testing.plugin import Names


async def queue(broker: unimq.Broker, names: Names, dest: str | None = None, **spec: Any) -> tuple[str, str | None]:
    """Ensure ``dest`` (default ``names.dest``) with one group of its own on fan-out backends, else
    its default group; return ``(destination, group)``. What is sent next reaches that group even
    before a consumer of it starts."""
    dest = dest or names.dest
    group = names.group() if broker.capabilities_for(dest).fanout else None
    await broker.ensure(dest, groups=(group,) if group else (), **spec)
    return dest, group


def describe(delivery: unimq.Delivery) -> str:
    m = delivery.message
    headers = dict(list(m.headers.items())[:5])
    return f"body={m.body[:40]!r} id={m.message_id} attempt={delivery.attempt} headers={headers}"


async def collect(
    consumer: unimq.Consumer, count: int, timing: Timing, *, ack: bool = True
) -> list[unimq.Delivery]:
    """Receive until ``count`` deliveries arrived, or ``timing.receive`` passed without one."""
    out: list[unimq.Delivery] = []
    while len(out) < count:
        delivery = await consumer.receive(timeout=timing.receive)
        if delivery is None:
            break
        out.append(delivery)
        if ack:
            await delivery.ack()
    return out


def body(delivery: unimq.Delivery) -> Hashable:
    return delivery.message.body


async def collect_all(
    consumer: unimq.Consumer,
    expected: Iterable[Hashable],
    timing: Timing,
    key: Callable[[unimq.Delivery], Hashable] = body,
) -> list[unimq.Delivery]:
    """Receive and ack until every expected key was seen; fail listing what is missing or foreign.

    Duplicates are tolerated (at-least-once) and returned, so a test can count them if it cares.
    """
    wanted = set(expected)
    seen: set[Hashable] = set()
    out: list[unimq.Delivery] = []
    while seen != wanted:
        delivery = await consumer.receive(timeout=timing.receive)
        if delivery is None:
            missing = sorted(map(repr, wanted - seen))
            pytest.fail(f"{len(wanted - seen)} of {len(wanted)} messages never arrived "
                        f"(waited {timing.receive:g}s); e.g. {missing[:5]}")
        await delivery.ack()
        k = key(delivery)
        if k not in wanted:
            pytest.fail(f"received a message this test did not send: {describe(delivery)}")
        seen.add(k)
        out.append(delivery)
    return out


async def expect_nothing(consumer: unimq.Consumer, timing: Timing, why: str) -> None:
    """Watch for ``timing.quiet`` seconds; any delivery fails the test."""
    delivery = await consumer.receive(timeout=timing.quiet)
    if delivery is not None:
        pytest.fail(f"{why}, but got {describe(delivery)}")


async def dead_letters(broker: unimq.Broker, dest: str, count: int, timing: Timing) -> list[unimq.Delivery]:
    """Read (and ack) ``count`` messages from the dead-letter destination of ``dest``."""
    dlq = broker.dead_letter_destination(dest)
    async with broker.consumer(dlq) as consumer:
        got = await collect(consumer, count, timing)
    if len(got) < count:
        pytest.fail(f"{len(got)} of {count} messages reached the dead-letter destination {dlq!r}")
    return got


async def until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; returns its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


#: Larger limits are not probed with a body one byte over them (allocating it would be the test's cost).
OVERSIZE_PROBE_LIMIT = 64 * 1024 * 1024


def oversize(caps: unimq.Capabilities) -> bytes:
    """A body one byte over the limit; skips when the limit is too large to allocate cheaply."""
    if caps.max_message_bytes > OVERSIZE_PROBE_LIMIT:
        pytest.skip(f"max_message_bytes {caps.max_message_bytes} is too large to probe with an oversize body")
    return bytes(caps.max_message_bytes + 1)


def bodies(count: int, tag: str) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(count)]
