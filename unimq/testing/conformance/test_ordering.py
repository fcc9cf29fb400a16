"""Ordering: per-key order survives competing consumers where the backend declares ordering."""

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


@pytest.mark.requires("ordering")
async def test_per_key_order_with_two_consumers(broker: unimq.Broker, names: Names, caps: unimq.Capabilities,
                                                timing: Timing) -> None:
    """5 keys × 30 messages, two sequential consumers in one group: each key's first deliveries are in order."""
    dest, group = await queue(broker, names)
    messages = [unimq.Message(body=f"{k}:{i}".encode(), key=f"key-{k}") for i in range(PER_KEY) for k in range(KEYS)]
    await broker.producer(dest).send_many(messages)
    processed: list[tuple[str, int]] = []  # (key, sequence) in processing order, across both consumers
    total = KEYS * PER_KEY

    async def work(consumer: unimq.Consumer) -> None:
        while len(set(processed)) < total:
            delivery = await consumer.receive(timeout=0.2)
            if delivery is not None:
                key, seq = delivery.message.body.decode().split(":")
                processed.append((f"key-{key}", int(seq)))
                await delivery.ack()

    consumers = 2 if caps.competing_consumers else 1
    async with broker.consumer(dest, group, prefetch=10) as one, broker.consumer(dest, group, prefetch=10) as two:
        try:
            await asyncio.wait_for(asyncio.gather(*(work(c) for c in (one, two)[:consumers])), timing.receive * 2)
        except TimeoutError:
            pytest.fail(f"only {len(set(processed))} of {total} messages arrived")
    first_seen: dict[str, list[int]] = {}
    seen: set[tuple[str, int]] = set()
    for key, seq in processed:
        if (key, seq) not in seen:
            seen.add((key, seq))
            first_seen.setdefault(key, []).append(seq)
    for key, seqs in first_seen.items():
        assert seqs == sorted(seqs), f"{key} processed out of order: {seqs}"
