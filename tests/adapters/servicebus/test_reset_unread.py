"""A connection reset forgets what the consumer had buffered but not handed out.

Messages prefetched by a receiver whose connection dies are still locked to it: the service gives
them again when their lock (or the session) expires. Handing the buffered copies out as well means
every one of them is processed twice. Before the fix, 19 of 20 came twice in this test (the reset
was noticed only when a settlement failed, after the buffer had been handed out); since, only the
one the application held at the reset.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import unimq
from unimq.testing.faultproxy import FaultProxy

MESSAGES = 20
LOCK = timedelta(seconds=2)
#: Lets the event loop see the RST (it takes milliseconds); an application takes longer per message.
SETTLE = 0.3


async def _deliveries_after_reset(url: str, name: str, messages: list[unimq.Message]) -> Counter[bytes]:
    """Prefetch every message, take one, reset the connection, then take and ack everything that
    comes until nothing is new for a lock and a second; how often each body was handed out."""
    seen: Counter[bytes] = Counter()
    async with FaultProxy.for_url(url) as proxy, unimq.connect(proxy.url(url)) as flaky:
        await flaky.producer(name).send_many(messages)
        async with flaky.consumer(name, prefetch=MESSAGES) as consumer:
            first = await consumer.receive(timeout=10)
            assert first is not None, "nothing received before the reset"
            seen[first.message.body] += 1
            await asyncio.sleep(0.5)  # the rest of the prefetch arrives in the consumer's buffer
            await proxy.reset_all()
            await asyncio.sleep(SETTLE)
            await first.ack()  # its receiver is gone: skipped, so it comes again (held by the application)
            quiet = LOCK.total_seconds() + 1
            async with asyncio.timeout(20):
                while (delivery := await _receive_retrying(consumer, quiet)) is not None:
                    seen[delivery.message.body] += 1
                    await delivery.ack()
    return seen


async def _receive_retrying(consumer: unimq.Consumer, timeout: float) -> unimq.Delivery | None:
    """receive(), retried while the consumer reopens its receiver after the reset."""
    while True:
        try:
            return await consumer.receive(timeout=timeout)
        except unimq.BrokerConnectionError:
            await asyncio.sleep(0.1)


async def test_reset_discards_buffered_deliveries(broker: unimq.Broker, sb_url: str, name: str) -> None:
    await broker.ensure(name, lock_timeout=LOCK)
    seen = await _deliveries_after_reset(sb_url, name, [unimq.Message(body=b"%d" % i) for i in range(MESSAGES)])
    assert set(seen) == {b"%d" % i for i in range(MESSAGES)}, f"lost: {MESSAGES - len(seen)}"
    twice = sorted(body for body, count in seen.items() if count > 1)
    assert len(twice) <= 1, f"{len(twice)} of {MESSAGES} handed out twice after a reset: {twice}"


async def test_reset_discards_buffered_session_deliveries(sb_url: str, name: str) -> None:
    async with unimq.connect(sb_url + "&sessions=true&max_sessions=1") as broker:
        await broker.ensure(name, lock_timeout=LOCK)
        try:
            seen = await _deliveries_after_reset(
                sb_url + "&sessions=true&max_sessions=1", name,
                [unimq.Message(body=b"%d" % i, key="k") for i in range(MESSAGES)])
        finally:
            await broker.delete(name)
    assert set(seen) == {b"%d" % i for i in range(MESSAGES)}, f"lost: {MESSAGES - len(seen)}"
    twice = sorted(body for body, count in seen.items() if count > 1)
    assert len(twice) <= 1, f"{len(twice)} of {MESSAGES} handed out twice after a reset: {twice}"
