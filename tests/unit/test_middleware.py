"""Broker middleware: out on publish, in before decoding, after the ack — and never on a dead-letter ack."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace

import pytest

import unimq
from unimq.message import Delivery, Message
from unimq.middleware import Middleware
from unimq.reliability import DEAD_LETTER_REASON


class Stash(Middleware):
    """A toy claim-check: bodies over 8 bytes are kept here and sent as a reference."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.deleted: list[str] = []

    async def on_publish(self, destination: str, message: Message) -> Message:
        if len(message.body) <= 8:
            return message
        ref = uuid.uuid4().hex
        self.store[ref] = message.body
        return replace(message, body=b"", headers={**message.headers, "x-ref": ref})

    async def on_receive(self, destination: str, delivery: Delivery) -> None:
        ref = delivery.message.headers.get("x-ref")
        if ref is not None:
            delivery.message = replace(delivery.message, body=self.store[ref])

    async def on_acked(self, destination: str, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            ref = delivery.message.headers.get("x-ref")
            if ref:
                self.deleted.append(ref)
                self.store.pop(ref, None)


@pytest.fixture
async def broker():
    async with unimq.connect(f"memory://mw-{uuid.uuid4().hex[:6]}?max_message_bytes=64") as b:
        yield b


async def test_a_body_over_the_limit_travels_by_reference_and_is_deleted_after_the_ack(broker: unimq.Broker) -> None:
    stash = Stash()
    broker.use(stash)
    await broker.ensure("big")
    big = bytes(range(200))
    await broker.producer("big").send_many([big, b"small"])
    async with broker.consumer("big") as consumer:
        first, second = await consumer.receive_many(2, 1)
        assert {first.message.body, second.message.body} == {big, b"small"}
        assert len(stash.store) == 1
        await first.ack()
        await second.ack()
    assert stash.store == {} and len(stash.deleted) == 1


async def test_a_receive_failure_dead_letters_and_keeps_the_reference(broker: unimq.Broker) -> None:
    stash = Stash()
    broker.use(stash)
    await broker.ensure("lost")
    await broker.producer("lost").send(bytes(100))
    stash.store.clear()  # the referenced body is gone
    async with broker.consumer("lost") as consumer:
        assert await consumer.receive(timeout=0.2) is None
    async with broker.consumer(broker.dead_letter_destination("lost")) as dlq:
        dead = await dlq.receive(timeout=1)
        assert dead is not None
        assert "KeyError" in dead.message.headers[DEAD_LETTER_REASON]
    assert stash.deleted == []


async def test_use_takes_only_middlewares(broker: unimq.Broker) -> None:
    with pytest.raises(unimq.ConfigError, match="Middleware"):
        broker.use(object())  # type: ignore[arg-type]
