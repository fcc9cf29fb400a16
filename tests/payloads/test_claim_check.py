"""Claim-check on memory://: what goes by reference, when the object is deleted, and every failure."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

import unimq
from unimq.payloads import CLAIM_CHECK_HEADER, ClaimCheck, FileStore, Store
from unimq.payloads.claim_check import reference_body
from unimq.reliability import DEAD_LETTER_REASON

LIMIT = 4096


@pytest.fixture
async def broker() -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(f"memory://cc-{uuid.uuid4().hex[:6]}?max_message_bytes={LIMIT}") as b:
        await b.ensure("docs")
        yield b


@pytest.fixture
async def files(tmp_path: Path) -> FileStore:
    return await FileStore(tmp_path, prefix="claims").open()


def objects(store: FileStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


async def dead_letter(broker: unimq.Broker, destination: str) -> unimq.Message:
    async with broker.consumer(broker.dead_letter_destination(destination)) as dlq:
        dead = await dlq.receive(timeout=2)
        assert dead is not None
        await dead.ack()
        return dead.message


async def test_a_large_body_travels_by_reference_and_is_deleted_after_the_ack(broker: unimq.Broker,
                                                                              files: FileStore) -> None:
    broker.use(ClaimCheck(files, threshold=1000, broker=broker))
    big = bytes(range(256)) * 40  # 10 KiB: over the threshold and over the backend's limit
    sent = await broker.producer("docs").send_many([big, b"small"])
    assert len(objects(files)) == 1
    async with broker.consumer("docs") as consumer:
        got = await consumer.receive_many(2, 2)
        assert sorted(d.message.body for d in got) == sorted([big, b"small"])
        assert [d.message.message_id for d in got] == [m.message_id for m in sent]
        assert len(objects(files)) == 1  # not before the ack
        for delivery in got:
            await delivery.ack()
    assert objects(files) == []


async def test_the_default_threshold_is_the_destinations_limit(broker: unimq.Broker, files: FileStore) -> None:
    broker.use(ClaimCheck(files, broker=broker))
    await broker.producer("docs").send_many([bytes(LIMIT), bytes(LIMIT + 1)])
    assert len(objects(files)) == 1


async def test_the_wire_format_resolves_with_a_plain_client(broker: unimq.Broker, files: FileStore) -> None:
    """What docs/payloads.md promises other languages: header = URI, body = JSON with key/size/sha256."""
    producer = broker.producer("docs", middlewares=[ClaimCheck(files, threshold=10)])
    body = b"x" * 5000
    await producer.send(body, headers={"h": "v"}, content_type="text/plain")
    async with broker.consumer("docs") as raw:  # no middleware: what a plain client sees
        delivery = await raw.receive(timeout=2)
        assert delivery is not None
        message = delivery.message
        await delivery.nack()
    reference = json.loads(message.body)
    assert set(reference) == {"v", "uri", "key", "size", "sha256"} and reference["v"] == 1
    assert message.headers[CLAIM_CHECK_HEADER] == reference["uri"] and message.headers["h"] == "v"
    assert message.content_type == "text/plain"
    assert reference["uri"].startswith("file://") and reference["key"].startswith("claims/")
    stored = await files.get(reference["key"])
    assert Path(unquote(reference["uri"].removeprefix("file://"))) == files.root / reference["key"]
    assert stored == body and len(stored) == reference["size"]
    assert hashlib.sha256(stored).hexdigest() == reference["sha256"]


async def test_a_missing_object_is_dead_lettered_with_the_reason(broker: unimq.Broker, files: FileStore) -> None:
    broker.use(ClaimCheck(files, threshold=100))
    await broker.producer("docs").send(bytes(500))
    for path in objects(files):
        path.unlink()
    async with broker.consumer("docs") as consumer:
        assert await consumer.receive(timeout=0.3) is None
    dead = await dead_letter(broker, "docs")
    assert "is missing" in dead.headers[DEAD_LETTER_REASON]
    assert CLAIM_CHECK_HEADER in dead.headers  # the reference is kept, for a redrive once restored


async def test_nack_and_reject_keep_the_object(broker: unimq.Broker, files: FileStore) -> None:
    broker.use(ClaimCheck(files, threshold=100))
    await broker.producer("docs").send(bytes(500))
    async with broker.consumer("docs") as consumer:
        first = await consumer.receive(timeout=2)
        assert first is not None
        await first.nack()
        again = await consumer.receive(timeout=2)
        assert again is not None and again.message.body == bytes(500)
        await again.reject("cannot process")
    assert len(objects(files)) == 1
    dead = await dead_letter(broker, "docs")  # this consumer has the middleware too: it resolves
    assert dead.body == bytes(500) and dead.headers[DEAD_LETTER_REASON] == "cannot process"


async def test_delete_after_ack_false_leaves_the_object(broker: unimq.Broker, files: FileStore) -> None:
    broker.use(ClaimCheck(files, threshold=100, delete_after_ack=False))
    await broker.producer("docs").send(bytes(500))
    async with broker.consumer("docs") as consumer:
        delivery = await consumer.receive(timeout=2)
        assert delivery is not None
        await delivery.ack()
    assert len(objects(files)) == 1


class Broken(Store):
    """A store whose uploads fail."""

    location = "broken://"

    def uri(self, key: str) -> str:
        return f"broken://{key}"

    async def put(self, key: str, data: bytes) -> None:
        raise unimq.BrokerConnectionError("store unreachable")

    async def get(self, key: str) -> bytes:
        raise AssertionError("never called")

    async def delete(self, key: str) -> None:
        raise AssertionError("never called")


async def test_a_failed_upload_fails_the_send_and_sends_nothing(broker: unimq.Broker) -> None:
    producer = broker.producer("docs", middlewares=[ClaimCheck(Broken(), threshold=100)], retry=None)
    with pytest.raises(unimq.PublishError, match=r"upload.*failed, nothing was sent") as caught:
        await producer.send(bytes(500))
    assert caught.value.retryable
    assert (await broker.stats("docs")).depth == 0


@pytest.mark.parametrize("tamper", ["key", "digest", "json", "size"])
async def test_a_forged_or_changed_reference_is_dead_lettered(broker: unimq.Broker, files: FileStore,
                                                              tamper: str) -> None:
    secret = files.root / "secret.txt"
    secret.write_text("outside the store")
    reference: dict[str, Any] = {"v": 1, "uri": "file:///etc/passwd", "key": "claims/../secret.txt", "size": 17,
                                 "sha256": "0"}
    if tamper != "key":
        key = files.new_key()
        reference = json.loads(reference_body(files, key, bytes(500)))
        await files.put(key, bytes(499) + b"!")  # same size, other bytes
        if tamper == "size":
            reference["size"] = 10_000_000_000
    body = b"{not json" if tamper == "json" else json.dumps(reference).encode()
    await broker.producer("docs").send(body, headers={CLAIM_CHECK_HEADER: reference["uri"]})
    async with broker.consumer("docs", middlewares=[ClaimCheck(files, threshold=100)]) as consumer:
        assert await consumer.receive(timeout=0.3) is None
    async with broker.consumer(broker.dead_letter_destination("docs")) as dlq:
        reasons = [d.message.headers[DEAD_LETTER_REASON] for d in await dlq.receive_many(2, 1)]
    expected = {"key": "is not one this store", "digest": "does not match its reference", "json": "not JSON",
                "size": "holds 10000000000 bytes; the limit here is 1073741824"}[tamper]
    assert any(expected in reason for reason in reasons), reasons


async def test_bad_configuration_is_refused_at_creation(broker: unimq.Broker, files: FileStore, tmp_path: Path) -> None:
    with pytest.raises(unimq.ConfigError, match=f"above memory's limit of {LIMIT} bytes.*threshold <= {LIMIT}"):
        ClaimCheck(files, threshold=LIMIT + 1, broker=broker)
    with pytest.raises(unimq.ConfigError, match="pass threshold="):
        ClaimCheck(files)
    with pytest.raises(unimq.ConfigError, match="int >= 0"):
        ClaimCheck(files, threshold=-1)
    with pytest.raises(unimq.ConfigError, match="store"):
        ClaimCheck("s3://bucket", threshold=1)  # type: ignore[arg-type]
    with pytest.raises(unimq.ConfigError, match="not a directory"):
        await FileStore(tmp_path / "nope").open()
    with pytest.raises(unimq.ConfigError, match="prefix"):
        FileStore(tmp_path, prefix="../up")


async def test_forwarding_resolved_or_referenced_messages(broker: unimq.Broker, files: FileStore) -> None:
    """A resolved message sent again is stored again; a reference sent as it is stays one."""
    claim_check = ClaimCheck(files, threshold=100)
    await broker.ensure("copies")
    await broker.producer("docs", middlewares=[claim_check]).send(bytes(500))
    async with broker.consumer("docs", middlewares=[claim_check]) as consumer:
        delivery = await consumer.receive(timeout=2)
        assert delivery is not None
        await broker.producer("copies", middlewares=[claim_check]).send(delivery.message)
    async with broker.consumer("docs") as raw:
        reference = await raw.receive(timeout=2)
        assert reference is not None
        await broker.producer("copies", middlewares=[claim_check]).send(reference.message)
    assert len(objects(files)) == 2
    async with broker.consumer("copies", middlewares=[claim_check]) as copies:
        got = await copies.receive_many(2, 2)
        assert [d.message.body for d in got] == [bytes(500), bytes(500)]
