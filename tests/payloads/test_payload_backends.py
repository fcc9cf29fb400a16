"""A 5 MiB body through the claim-check (encrypted) on every backend, and through the migration mirror."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable

import pytest

import unimq
from unimq.migrate import Mirror
from unimq.payloads import CLAIM_CHECK_HEADER, ClaimCheck, Encrypted, Store
from unimq.reliability import DEAD_LETTER_REASON

BIG = os.urandom(5 * 1024 * 1024)
KEY = os.urandom(32)
#: Which store each backend's test uses, so every store runs against real brokers too.
STORES = {"memory": "file", "rabbitmq": "s3", "kafka": "azure", "redis": "file", "nats": "s3", "sqs": "s3",
          "servicebus": "azure"}
BACKENDS = [pytest.param(name, marks=pytest.mark.needs_broker(name)) for name in STORES]
#: Below every backend's limit, so RabbitMQ (16 MiB) and Redis (8 MiB) use the store too.
THRESHOLD = 64 * 1024


async def connect(target: str, broker_url: Callable[[str], str]) -> unimq.Broker:
    return await unimq.connect("memory://payloads" if target == "memory" else broker_url(target))


async def count_objects(store: Store, keys: list[str]) -> int:
    found = 0
    for key in keys:
        try:
            await store.get(key)
            found += 1
        except unimq.NotFound:
            pass
    return found


def key_of(message: unimq.Message) -> str:
    return str(json.loads(message.body)["key"])


@pytest.mark.parametrize("target", BACKENDS)
async def test_a_5_mib_body_round_trips_and_its_object_goes_after_the_ack(
        target: str, broker_url: Callable[[str], str], make_store: Callable[[str], object]) -> None:
    store: Store = await make_store(STORES[target])  # type: ignore[misc]
    broker = await connect(target, broker_url)
    destination = f"cc-{uuid.uuid4().hex[:8]}"
    try:
        await broker.ensure(destination)
        chain = [Encrypted({"k1": KEY}, current="k1"), ClaimCheck(store, threshold=THRESHOLD, broker=broker)]
        producer = broker.producer(destination, middlewares=chain)
        sent = await producer.send(BIG, headers={"kind": "big"})
        await producer.send(b"small")
        async with broker.consumer(destination, middlewares=chain) as consumer:
            got = await consumer.receive_many(2, 20)
            assert sorted(d.message.body for d in got) == sorted([BIG, b"small"])
            big = next(d for d in got if d.message.body == BIG)
            assert big.message.headers["kind"] == "big" and big.message.message_id == sent.message_id
            key = store.prefix + big.message.headers[CLAIM_CHECK_HEADER][-32:]
            assert await count_objects(store, [key]) == 1  # it went by reference, and stays until the ack
            for delivery in got:
                await delivery.ack()
        for _ in range(50):  # acks are sent in the background; the delete follows the broker's answer
            if await count_objects(store, [key]) == 0:
                break
            await asyncio.sleep(0.1)
        assert await count_objects(store, [key]) == 0
    finally:
        await broker.delete(destination)
        await broker.close()
        await store.close()


#: Dead-letter and redelivery copies are made of the message as received (``Delivery.wire``): the
#: reference, never the resolved body.
SETTLE_BACKENDS = [pytest.param(name, marks=[pytest.mark.needs_broker(name)]) for name in STORES]


@pytest.mark.parametrize("target", SETTLE_BACKENDS)
async def test_a_nacked_then_rejected_reference_is_dead_lettered_as_a_reference(
        target: str, broker_url: Callable[[str], str], make_store: Callable[[str], object]) -> None:
    store: Store = await make_store(STORES[target])  # type: ignore[misc]
    broker = await connect(target, broker_url)
    destination = f"cc-{uuid.uuid4().hex[:8]}"
    try:
        await broker.ensure(destination)
        claim_check = ClaimCheck(store, threshold=THRESHOLD, broker=broker)
        await broker.producer(destination, middlewares=[claim_check]).send(BIG)
        async with broker.consumer(destination, middlewares=[claim_check]) as consumer:
            delivery = await consumer.receive(timeout=10)
            assert delivery is not None and delivery.message.body == BIG
            await delivery.nack()
            delivery = await consumer.receive(timeout=10)
            assert delivery is not None and delivery.message.body == BIG
            await delivery.reject("bad document")
        async with broker.consumer(broker.dead_letter_destination(destination)) as dlq:
            dead = await dlq.receive(timeout=10)
            assert dead is not None
            await dead.ack()
        assert dead.message.headers[DEAD_LETTER_REASON] == "bad document"
        assert len(dead.message.body) < 400
        assert await count_objects(store, [key_of(dead.message)]) == 1
    finally:
        await broker.delete(destination)
        await broker.close()
        await store.close()


@pytest.mark.needs_broker("redis")
async def test_a_referenced_payload_survives_a_mirror_to_another_backend(
        broker_url: Callable[[str], str], make_store: Callable[[str], object]) -> None:
    store: Store = await make_store("s3")  # type: ignore[misc]
    destination = f"cc-{uuid.uuid4().hex[:8]}"
    async with unimq.connect(f"memory://old-{destination}") as old, unimq.connect(broker_url("redis")) as new:
        try:
            await old.ensure(destination)
            await new.ensure(destination)
            sent = await old.producer(destination, middlewares=[ClaimCheck(store, broker=old)]).send(BIG)
            assert len(BIG) > old.capabilities.max_message_bytes  # it can only travel by reference
            stats = await Mirror(old, destination, new, destination, group=None).run(idle=1.0)
            assert stats.forwarded == 1
            async with new.consumer(destination, middlewares=[ClaimCheck(store, broker=new)]) as consumer:
                delivery = await consumer.receive(timeout=10)
                assert delivery is not None
                assert delivery.message.body == BIG and delivery.message.message_id == sent.message_id
                await delivery.ack()
        finally:
            await new.delete(destination)
            await store.close()
