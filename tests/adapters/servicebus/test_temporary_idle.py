"""Native temporary destinations on Service Bus: ensure(temporary=True) sets AutoDeleteOnIdle to the
URL's temporary_idle, and the broker deletes the entity once idle that long (the double takes a
short idle time; Azure needs at least 5 minutes, which connect() checks)."""

from __future__ import annotations

import asyncio
import time

import pytest

import unimq

#: Seconds of idleness before the double deletes a temporary entity in these tests.
IDLE = 1.0


async def _gone(broker: unimq.Broker, name: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if name not in await broker.destinations():
            return True
        await asyncio.sleep(0.1)
    return name not in await broker.destinations()


async def test_a_temporary_queue_is_deleted_once_idle_and_a_used_one_is_not(sb_url: str, name: str) -> None:
    async with unimq.connect(sb_url + f"&temporary_idle={IDLE:g}") as broker:
        assert broker.capabilities.temporary.is_native
        used, plain = f"{name}-used", f"{name}-plain"
        try:
            await broker.ensure(name, temporary=True)
            await broker.ensure(used, temporary=True)
            await broker.ensure(plain)
            producer = broker.producer(used)
            async with asyncio.timeout(30), broker.consumer(used) as consumer:
                started = time.monotonic()
                while time.monotonic() - started < 2 * IDLE:
                    await producer.send(b"keep")
                    delivery = await consumer.receive(timeout=5)
                    assert delivery is not None and delivery.message.body == b"keep"
                    await delivery.ack()
                listed = await broker.destinations()
                assert used in listed, "a temporary queue in use was deleted"
                assert name not in listed, f"an unused temporary queue outlived {2 * IDLE:g}s (idle {IDLE:g}s)"
            assert await _gone(broker, used, 5 * IDLE), "the temporary queue was kept after its last use"
            assert plain in await broker.destinations(), "a queue made without temporary=True was deleted"
        finally:
            for each in (name, used, plain):
                await broker.delete(each)


async def test_a_temporary_topic_goes_with_its_groups(sb_url: str, name: str) -> None:
    async with unimq.connect(sb_url + f"&temporary_idle={IDLE:g}") as broker:
        try:
            await broker.ensure(name, groups=["a", "b"], temporary=True)
            assert name in await broker.destinations()
            assert await _gone(broker, name, 5 * IDLE), "an unused temporary topic was kept"
        finally:
            await broker.delete(name)


async def test_broker_temporary_makes_an_entity_the_broker_removes(sb_url: str) -> None:
    """broker.temporary() passes temporary=True here: left idle inside its block (as after a crash,
    when no exit deletes it), the broker removes it; the delete on exit then finds nothing."""
    async with unimq.connect(sb_url + f"&temporary_idle={IDLE:g}") as broker, broker.temporary() as name:
        assert name in await broker.destinations()
        assert await _gone(broker, name, 5 * IDLE), "an idle temporary destination was kept"


@pytest.mark.parametrize("idle", ["60", "299.5"])
async def test_azure_refuses_an_idle_time_under_five_minutes(idle: str) -> None:
    with pytest.raises(unimq.ConfigError, match=r"temporary_idle.*300"):
        await unimq.connect(f"servicebus://Key:secret@example-ns?temporary_idle={idle}")
