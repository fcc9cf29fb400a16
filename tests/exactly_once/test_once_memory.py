"""Exactly-once effect on memory:// (one process: several concurrent consumers stand in for the
processes): injected duplicates, handlers that fail mid-way, a consumer cancelled mid-handler."""

from __future__ import annotations

import asyncio
import random
import uuid
import zlib
from collections import Counter

import pytest

import unimq
from unimq.errors import ConfigError
from unimq.idempotency import MemoryStore
from unimq.message import Delivery, Message
from unimq.reliability import Retry

N = 200
DUPLICATES = 80


async def _send_with_duplicates(broker: unimq.Broker, dest: str) -> set[str]:
    messages = [Message(f"{i}".encode(), key=f"k{i % 5}") for i in range(N)]
    producer = broker.producer(dest)
    await producer.send_many(messages)
    twins = random.sample(messages, DUPLICATES)
    await producer.send_many([Message(m.body, key=m.key, message_id=m.message_id) for m in twins])
    return {m.message_id for m in messages}


async def test_consume_with_idempotency_concurrent_consumers() -> None:
    store = MemoryStore(lease=1.0)
    effects: Counter[str] = Counter()
    failed_once: set[str] = set()
    async with unimq.connect(f"memory://once-{uuid.uuid4().hex[:8]}") as broker:
        expected = await _send_with_duplicates(broker, "orders")

        async def handler(delivery: Delivery) -> None:
            message_id = delivery.message.message_id
            await asyncio.sleep(random.uniform(0, 0.005))
            if zlib.crc32(message_id.encode()) % 7 == 0 and message_id not in failed_once:
                failed_once.add(message_id)
                raise RuntimeError("the handler fails before its effect")  # released, then retried
            effects[message_id] += 1

        stops = [asyncio.Event() for _ in range(3)]
        retry = Retry(max_attempts=20, initial=0.01, max_delay=0.05)
        tasks = [asyncio.create_task(broker.consume("orders", handler, concurrency=4, idempotency=store, retry=retry,
                                                    stop=stop, shutdown_timeout=0.01)) for stop in stops]
        await asyncio.sleep(0.05)
        tasks[0].cancel()  # one consumer dies mid-run: its in-flight handlers are cancelled, claims released
        deadline = asyncio.get_running_loop().time() + 20
        while set(effects) < expected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert set(effects) == expected, f"{len(expected - set(effects))} messages never took effect"
    assert all(c == 1 for c in effects.values()), {m: c for m, c in effects.items() if c > 1}
    assert failed_once, "the failure injection did not happen"


async def test_async_for_loop_with_once() -> None:
    store = MemoryStore(lease=1.0)
    effects: Counter[str] = Counter()
    async with unimq.connect(f"memory://loop-{uuid.uuid4().hex[:8]}") as broker:
        expected = await _send_with_duplicates(broker, "orders")

        async def loop() -> None:
            async with broker.consumer("orders") as consumer:
                while (delivery := await consumer.receive(timeout=0.5)) is not None:
                    async with store.once(delivery) as fresh:
                        if fresh:
                            await asyncio.sleep(0.001)
                            effects[delivery.message.message_id] += 1
                    await delivery.ack()

        await asyncio.wait_for(asyncio.gather(loop(), loop(), loop()), 30)
    assert set(effects) == expected and all(c == 1 for c in effects.values())


async def test_bad_idempotency_options_fail_at_consume() -> None:
    async with unimq.connect(f"memory://noid-{uuid.uuid4().hex[:8]}") as broker:
        with pytest.raises(ConfigError, match="idempotency"):
            await broker.consume("q", lambda d: None, idempotency=object())
        with pytest.raises(ConfigError, match="idempotency_key"):
            await broker.consume("q", lambda d: None, idempotency=MemoryStore(), idempotency_key="order")  # type: ignore[arg-type]
