"""Ordering, where the backend declares it: per key with competing consumers, and with one consumer."""

from __future__ import annotations

import asyncio

import pytest

import unimq
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio

KEYS = 5
PER_KEY = 30


async def _process(broker: unimq.Broker, names: Names, consumers: int, timing: Timing) -> list[tuple[int, int]]:
    """Send 5 keys × 30 messages interleaved; return (key, sequence) of first deliveries in processing order.

    Each consumer processes sequentially (receive, record, ack), as an application keeping order would.
    """
    dest, group = await queue(broker, names)
    messages = [unimq.Message(body=f"{k}:{i}".encode(), key=f"key-{k}") for i in range(PER_KEY) for k in range(KEYS)]
    await broker.producer(dest).send_many(messages)
    processed: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    total = KEYS * PER_KEY

    async def work(consumer: unimq.Consumer) -> None:
        while len(seen) < total:
            delivery = await consumer.receive(timeout=0.2)
            if delivery is not None:
                key, seq = map(int, delivery.message.body.decode().split(":"))
                if (key, seq) not in seen:
                    seen.add((key, seq))
                    processed.append((key, seq))
                await delivery.ack()

    opened = [broker.consumer(dest, group, prefetch=10) for _ in range(consumers)]
    try:
        for consumer in opened:
            await consumer.open()
        await asyncio.wait_for(asyncio.gather(*(work(c) for c in opened)), timing.receive * 2)
    except TimeoutError:
        pytest.fail(f"only {len(seen)} of {total} messages arrived")
    finally:
        for consumer in opened:
            await consumer.close()
    return processed


def _check_per_key(processed: list[tuple[int, int]]) -> None:
    for key in range(KEYS):
        seqs = [seq for k, seq in processed if k == key]
        assert seqs == sorted(seqs), f"key-{key} processed out of order: {seqs}"


@pytest.mark.requires("ordering", "competing_consumers")
async def test_per_key_order_with_two_consumers(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Two sequential consumers in one group: each key's messages are still processed in order."""
    _check_per_key(await _process(broker, names, 2, timing))


@pytest.mark.requires("ordering")
async def test_order_with_one_consumer(broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                       timing: Timing) -> None:
    """One consumer: per-key order, and send order overall where the declaration is 'global'."""
    processed = await _process(broker, names, 1, timing)
    _check_per_key(processed)
    if caps.ordering == "global":
        assert processed == [(k, i) for i in range(PER_KEY) for k in range(KEYS)], "global order not kept"
