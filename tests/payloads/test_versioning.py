"""Versioned: the header from the model, upcasters for older bodies, newer ones dead-lettered."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import unimq
from unimq.codecs import Compressed, JsonCodec
from unimq.payloads import SCHEMA_VERSION_HEADER, ClaimCheck, Encrypted, FileStore, Versioned
from unimq.reliability import DEAD_LETTER_REASON


class OrderV1(BaseModel):
    __version__: ClassVar[int] = 1
    id: int
    amount: float


class OrderV3(BaseModel):
    __version__: ClassVar[int] = 3
    id: int
    amount_cents: int
    currency: str


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"id": data["id"], "amount_cents": round(data["amount"] * 100)}


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


@pytest.fixture
async def broker() -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(f"memory://ver-{uuid.uuid4().hex[:6]}") as b:
        await b.ensure("orders")
        yield b


def current() -> Versioned:
    versions = Versioned(OrderV3, upcasters={1: v1_to_v2})

    @versions.upcaster(2)
    def lift(data: dict[str, Any]) -> dict[str, Any]:
        return v2_to_v3(data)

    return versions


async def test_older_bodies_are_upcast_and_current_ones_pass(broker: unimq.Broker) -> None:
    await broker.producer("orders", schema=OrderV1, middlewares=[Versioned(OrderV1)]).send(OrderV1(id=1, amount=2.5))
    await broker.producer("orders", codec=Compressed(JsonCodec())).send({"id": 2, "amount_cents": 7},
                                                                        headers={SCHEMA_VERSION_HEADER: "2"})
    await broker.producer("orders", codec=JsonCodec()).send({"id": 0, "amount": 1.0})  # unversioned = v1
    await broker.producer("orders", schema=OrderV3, middlewares=[current()]).send(
        OrderV3(id=3, amount_cents=1, currency="USD"))
    async with broker.consumer("orders", schema=OrderV3, middlewares=[current()]) as consumer:
        got = await consumer.receive_many(4, 2)
    assert [d.payload for d in got] == [
        OrderV3(id=1, amount_cents=250, currency="EUR"), OrderV3(id=2, amount_cents=7, currency="EUR"),
        OrderV3(id=0, amount_cents=100, currency="EUR"), OrderV3(id=3, amount_cents=1, currency="USD")]
    assert {d.message.headers[SCHEMA_VERSION_HEADER] for d in got} == {"3"}


async def test_a_newer_version_is_dead_lettered_with_the_reason(broker: unimq.Broker) -> None:
    await broker.producer("orders", schema=OrderV3, middlewares=[current()]).send(
        OrderV3(id=3, amount_cents=1, currency="USD"))
    async with broker.consumer("orders", schema=OrderV1, middlewares=[Versioned(OrderV1)]) as consumer:
        assert await consumer.receive(timeout=0.3) is None
    async with broker.consumer(broker.dead_letter_destination("orders")) as dlq:
        dead = await dlq.receive(timeout=2)
        assert dead is not None
    reason = dead.message.headers[DEAD_LETTER_REASON]
    assert "OrderV1 v3 is newer than this consumer's v1; upgrade the consumer" in reason


async def test_a_gap_in_the_upcasters_or_a_bad_header_is_dead_lettered(broker: unimq.Broker) -> None:
    await broker.producer("orders").send(b'{"id": 1, "amount": 1}', headers={SCHEMA_VERSION_HEADER: "1"})
    await broker.producer("orders").send(b'{"id": 1}', headers={SCHEMA_VERSION_HEADER: "two"})
    gap = Versioned(OrderV3, upcasters={2: v2_to_v3})
    async with broker.consumer("orders", schema=OrderV3, middlewares=[gap]) as consumer:
        assert await consumer.receive(timeout=0.3) is None
    async with broker.consumer(broker.dead_letter_destination("orders")) as dlq:
        reasons = [d.message.headers[DEAD_LETTER_REASON] for d in await dlq.receive_many(2, 2)]
    assert "no upcaster from OrderV3 v1 to v2" in reasons[0] and "'two' is not a version number" in reasons[1]


def test_configuration_is_checked() -> None:
    class Plain(BaseModel):
        x: int

    with pytest.raises(unimq.ConfigError, match="__version__"):
        Versioned(Plain)
    with pytest.raises(unimq.ConfigError, match="lifts a version from 1 to 2"):
        Versioned(OrderV3, upcasters={3: v2_to_v3})
    with pytest.raises(unimq.ConfigError, match="on_newer"):
        Versioned(OrderV3, on_newer="drop")  # type: ignore[arg-type]
    assert Versioned(Plain, version=4).version == 4


async def test_on_newer_nack_leaves_the_message_for_an_upgraded_consumer(broker: unimq.Broker) -> None:
    waiting = Versioned(OrderV1, on_newer="nack", nack_delay=0.0)
    await broker.producer("orders", schema=OrderV3, middlewares=[current()]).send(
        OrderV3(id=3, amount_cents=1, currency="USD"))
    async with broker.consumer("orders", schema=OrderV1, middlewares=[waiting]) as consumer:
        assert await consumer.receive(timeout=0.3) is None
    async with broker.consumer("orders", schema=OrderV3, middlewares=[current()]) as upgraded:
        delivery = await upgraded.receive(timeout=2)
        assert delivery is not None and delivery.payload.currency == "USD"


async def test_all_three_compose_through_use(broker: unimq.Broker, tmp_path: Path) -> None:
    store = await FileStore(tmp_path).open()
    old = Versioned(OrderV1)
    chain = [Encrypted({"k": bytes(range(32))}, current="k"), ClaimCheck(store, threshold=200)]
    await broker.producer("orders", schema=OrderV1, middlewares=[old, *chain]).send(OrderV1(id=9, amount=1e6))
    await broker.producer("orders", codec=JsonCodec(), middlewares=[current(), *chain]).send(
        {"id": 10, "amount_cents": 5, "currency": "x" * 1000})
    broker.use(current(), *chain)
    async with broker.consumer("orders", schema=OrderV3) as consumer:
        got = await consumer.receive_many(2, 2)
    assert [d.payload for d in got] == [OrderV3(id=9, amount_cents=100_000_000, currency="EUR"),
                                        OrderV3(id=10, amount_cents=5, currency="x" * 1000)]
