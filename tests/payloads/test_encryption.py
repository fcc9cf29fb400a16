"""Encrypted: round trip, rotation, binding to message and destination, refusals, composition."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import unimq
from unimq.codecs import Compressed, JsonCodec
from unimq.payloads import KEY_ID, ClaimCheck, Encrypted, FileStore
from unimq.reliability import DEAD_LETTER_REASON

OLD, NEW = os.urandom(32), os.urandom(32)


@pytest.fixture
async def broker() -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(f"memory://enc-{uuid.uuid4().hex[:6]}") as b:
        await b.ensure("secrets")
        await b.ensure("other")
        yield b


async def receive(broker: unimq.Broker, destination: str, *middlewares: unimq.middleware.Middleware,
                  **options: object) -> unimq.Delivery | None:
    async with broker.consumer(destination, middlewares=list(middlewares), **options) as consumer:  # type: ignore[arg-type]
        delivery = await consumer.receive(timeout=0.5)
        if delivery is not None:
            await delivery.ack()
        return delivery


async def dead_reason(broker: unimq.Broker, destination: str) -> str:
    async with broker.consumer(broker.dead_letter_destination(destination)) as dlq:
        dead = await dlq.receive(timeout=2)
        assert dead is not None
        await dead.ack()
        return dead.message.headers[DEAD_LETTER_REASON]


async def raw_body(broker: unimq.Broker, destination: str) -> unimq.Message:
    delivery = await receive(broker, destination)
    assert delivery is not None
    return delivery.message


async def test_round_trip_with_the_key_id_in_a_header(broker: unimq.Broker) -> None:
    enc = Encrypted({"k1": OLD}, current="k1")
    await broker.producer("secrets", middlewares=[enc]).send(b"card 4111")
    wire = await raw_body(broker, "secrets")
    assert wire.headers[KEY_ID] == "k1" and b"4111" not in wire.body
    assert wire.body[0] == 1 and len(wire.body) == 1 + 12 + len(b"card 4111") + 16
    await broker.producer("secrets", middlewares=[enc]).send(b"card 4111")
    delivery = await receive(broker, "secrets", enc)
    assert delivery is not None and delivery.message.body == b"card 4111"


async def test_rotation_decrypts_old_keys_and_encrypts_with_the_current(broker: unimq.Broker) -> None:
    before = Encrypted({"k1": OLD}, current="k1")
    after = Encrypted({"k1": OLD, "k2": NEW}, current="k2")
    await broker.producer("secrets", middlewares=[before]).send(b"old")
    await broker.producer("secrets", middlewares=[after]).send(b"new")
    assert [m.headers[KEY_ID] for m in await broker.peek("secrets", 2)] == ["k1", "k2"]
    async with broker.consumer("secrets", middlewares=[after]) as consumer:
        got = await consumer.receive_many(2, 2)
        assert [d.message.body for d in got] == [b"old", b"new"]
        assert all(KEY_ID not in d.message.headers for d in got)  # the header described the ciphertext


async def test_a_received_message_forwards_through_an_encrypting_producer(broker: unimq.Broker) -> None:
    enc = Encrypted({"k1": OLD}, current="k1")
    await broker.producer("secrets", middlewares=[enc]).send(b"forward me")
    async with broker.consumer("secrets", middlewares=[enc]) as consumer:
        delivery = await consumer.receive(timeout=2)
        assert delivery is not None
        await broker.producer("other", middlewares=[enc]).send(delivery.message)
        await delivery.ack()
    forwarded = await receive(broker, "other", enc)
    assert forwarded is not None and forwarded.message.body == b"forward me"
    await broker.producer("other").send(unimq.Message(b"x", headers={KEY_ID: "k1"}))
    with pytest.raises(unimq.ConfigError, match="already carries x-unimq-key-id: its body is ciphertext"):
        await broker.producer("other", middlewares=[enc]).send(unimq.Message(b"x", headers={KEY_ID: "k1"}))


async def test_an_unknown_key_is_dead_lettered_never_passed_through(broker: unimq.Broker) -> None:
    await broker.producer("secrets", middlewares=[Encrypted({"k2": NEW}, current="k2")]).send(b"x")
    assert await receive(broker, "secrets", Encrypted({"k1": OLD}, current="k1")) is None
    reason = await dead_reason(broker, "secrets")
    assert "key id 'k2', which this consumer does not have" in reason and "add that key" in reason


@pytest.mark.parametrize("replay", ["message_id", "destination", "key_id"])
async def test_a_body_replayed_elsewhere_does_not_decrypt(broker: unimq.Broker, replay: str) -> None:
    enc = Encrypted({"k1": OLD, "k2": OLD}, current="k1")
    await broker.producer("secrets", middlewares=[enc]).send(b"pay 10 EUR")
    wire = await raw_body(broker, "secrets")
    target = "other" if replay == "destination" else "secrets"
    headers = {**wire.headers, KEY_ID: "k2"} if replay == "key_id" else wire.headers
    message_id = uuid.uuid4().hex if replay == "message_id" else wire.message_id
    await broker.producer(target).send(unimq.Message(wire.body, headers=headers, message_id=message_id))
    assert await receive(broker, target, enc) is None
    assert "does not decrypt" in await dead_reason(broker, target)


async def test_a_dead_lettered_message_decrypts_on_the_dead_letter_destination(broker: unimq.Broker) -> None:
    enc = Encrypted({"k1": OLD}, current="k1")
    await broker.producer("secrets", middlewares=[enc]).send(b"poison")
    async with broker.consumer("secrets", middlewares=[enc]) as consumer:
        delivery = await consumer.receive(timeout=2)
        assert delivery is not None
        await delivery.reject("handler refused")
    dead = await receive(broker, broker.dead_letter_destination("secrets"), enc)
    assert dead is not None and dead.message.body == b"poison"


def stored_files(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


async def test_composes_with_compression_and_claim_check(broker: unimq.Broker, tmp_path: Path) -> None:
    """Compress (codec), encrypt, then claim-check: the store and the broker see only ciphertext."""
    store = await FileStore(tmp_path).open()
    chain = [Encrypted({"k1": OLD}, current="k1"), ClaimCheck(store, threshold=1000)]
    document = {"text": "confidential " + os.urandom(20_000).hex()}
    codec = Compressed(JsonCodec())
    await broker.producer("secrets", codec=codec, middlewares=chain).send(document)
    await broker.producer("secrets", codec=codec, middlewares=chain).send({"text": "short"})
    (stored,) = stored_files(tmp_path)
    assert b"confidential" not in stored
    async with broker.consumer("secrets", codec=codec, middlewares=chain) as consumer:
        got = await consumer.receive_many(2, 2)
        assert [d.payload for d in got] == [document, {"text": "short"}]


def test_bad_keys_are_refused_at_creation_without_showing_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    short = b"0123456789abcde"  # 120 bits
    with pytest.raises(unimq.ConfigError, match="120 bits; AES-GCM needs at least 128") as caught:
        Encrypted({"k": short}, current="k")
    with pytest.raises(unimq.ConfigError, match="16, 24 or 32"):
        Encrypted({"k": os.urandom(20)}, current="k")
    with pytest.raises(unimq.ConfigError, match="must be bytes"):
        Encrypted({"k": "a text password"}, current="k")  # type: ignore[dict-item]
    with pytest.raises(unimq.ConfigError, match="not one of the key ids"):
        Encrypted({"k": OLD}, current="other")
    with pytest.raises(unimq.ConfigError, match="empty"):
        Encrypted({}, current="k")
    enc = Encrypted({"k": OLD}, current="k")
    shown = f"{caught.value} {enc!r} {enc} {vars(enc)} {caplog.text}"
    assert short.decode() not in shown and OLD.hex() not in shown and repr(OLD) not in shown
