"""SQS limits and options give clear errors before anything is sent; nothing is lost because of them."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

import unimq
from unimq.reliability import DEAD_LETTER_REASON, DEAD_LETTER_SOURCE


async def assert_empty(boto: Any, name: str) -> None:
    url = boto.get_queue_url(QueueName=name)["QueueUrl"]
    assert boto.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []


async def test_too_many_headers(broker: unimq.Broker, boto: Any, name: str) -> None:
    await broker.ensure(name)
    producer = broker.producer(name)
    await producer.send(b"nine fit", headers={f"h{i}": "v" for i in range(9)})
    with pytest.raises(unimq.PublishError, match="at most 9 headers fit") as info:
        await producer.send(b"ten do not", headers={f"h{i}": "v" for i in range(10)})
    assert isinstance(info.value.results[0], unimq.CapabilityError)
    async with broker.consumer(name) as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None and len(got.message.headers) == 9
        await got.ack()
    await assert_empty(boto, name)


async def test_headers_sqs_cannot_name_travel_packed(broker: unimq.Broker, boto: Any, name: str) -> None:
    await broker.ensure(name)
    headers = {"bad name": "v", "AWS.trace": "t", "unimq": "u", "empty": "", "ctl": "a\x00b", "ключ": "значение",
               "plain": "ok"}
    await broker.producer(name).send(b"x", headers=headers)
    url = boto.get_queue_url(QueueName=name)["QueueUrl"]
    raw = boto.receive_message(QueueUrl=url, WaitTimeSeconds=2, MessageAttributeNames=["All"],
                               VisibilityTimeout=0)["Messages"][0]
    assert set(raw["MessageAttributes"]) == {"plain", "unimq"}  # only what SQS can represent is an attribute
    async with broker.consumer(name) as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None and got.message.headers == headers
        await got.ack()


async def test_size_limit_counts_attributes(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    producer = broker.producer(name)
    assert broker.capabilities.max_message_bytes == (262_144 - 1024) * 3 // 4
    with pytest.raises(unimq.MessageTooLarge):
        await producer.send(b"x" * 262_145)
    with pytest.raises(unimq.PublishError, match="on the wire") as info:
        await producer.send(b"x" * 195_000, headers={"big": "y" * 70_000})
    assert isinstance(info.value.results[0], unimq.MessageTooLarge)
    await producer.send(b"x" * 195_000, headers={"big": "y" * 60_000})


async def test_send_many_reports_per_message_failures(broker: unimq.Broker, boto: Any, name: str) -> None:
    await broker.ensure(name)
    items = [unimq.Message(body=f"m{i}".encode(), headers={"ok": "1"}) for i in range(12)]
    items[3].headers = {f"h{i}": "v" for i in range(11)}
    items[11].headers = {f"h{i}": "v" for i in range(10)}
    with pytest.raises(unimq.PublishError) as info:
        await broker.producer(name).send_many(items)
    failed = [i for i, r in enumerate(info.value.results) if r is not None]
    assert failed == [3, 11]
    async with broker.consumer(name) as consumer:
        got = await consumer.receive_many(10, 5)
        for d in got:
            await d.ack()
    assert sorted(d.message.body for d in got) == sorted(m.body for i, m in enumerate(items) if i not in failed)


async def test_big_batches_are_split_by_size(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    sent = await broker.producer(name).send_many([bytes([65 + i]) * 100_000 for i in range(5)])
    assert len(sent) == 5
    assert (await broker.stats(name)).depth == 5


async def test_delay_limit_and_native_delay(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    producer = broker.producer(name)
    with pytest.raises(unimq.CapabilityError, match="900"):
        await producer.send(b"x", delay=timedelta(seconds=901))
    await producer.send(b"later", delay=timedelta(seconds=2))
    async with broker.consumer(name) as consumer:
        assert await consumer.receive(timeout=1) is None
        got = await consumer.receive(timeout=5)
        assert got is not None and got.message.body == b"later"
        await got.ack()


async def test_ttl_is_emulated(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    producer = broker.producer(name)
    await producer.send(b"stale", ttl=timedelta(seconds=1))
    await producer.send(b"fresh", ttl=timedelta(minutes=5))
    await asyncio.sleep(1.2)
    async with broker.consumer(name) as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None and got.message.body == b"fresh"
        assert got.message.ttl is not None and got.message.ttl > timedelta(minutes=4)
        await got.ack()
        assert await consumer.receive(timeout=1) is None
    assert (await broker.stats(name)).depth == 0


async def test_no_groups_no_peek_no_priority(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    with pytest.raises(unimq.CapabilityError, match="fanout"):
        broker.consumer(name, group="billing")
    with pytest.raises(unimq.CapabilityError, match="fanout"):
        await broker.ensure(name, groups=("billing",))
    with pytest.raises(unimq.CapabilityError, match="peek"):
        await broker.peek(name)
    with pytest.raises(unimq.CapabilityError, match="priority"):
        await broker.producer(name).send(b"x", priority=3)


async def test_missing_queue_and_auto_create(name: str, sqs_url: str) -> None:
    async with unimq.connect(sqs_url) as broker:
        with pytest.raises(unimq.PublishError, match="does not exist") as info:
            await broker.producer(name).send(b"x")
        assert isinstance(info.value.results[0], unimq.NotFound)
        with pytest.raises(unimq.NotFound):
            await broker.consumer(name).open()
        with pytest.raises(unimq.ConfigError, match="not a valid queue name"):
            await broker.ensure("orders.created")
    async with unimq.connect(sqs_url, auto_create=True) as broker:
        await broker.producer(name).send(b"x")
        assert name in await broker.destinations()
        await broker.delete(name)
        assert name not in await broker.destinations()


async def test_options_are_validated_and_secrets_hidden(sqs_url: str) -> None:
    with pytest.raises(unimq.ConfigError, match="unknown option 'regoin'"):
        await unimq.connect(sqs_url + "&regoin=x")
    with pytest.raises(unimq.ConfigError, match="wait_time"):
        await unimq.connect(sqs_url + "&wait_time=30")
    secret = "S3cr3tValueNotToLeak"
    async with unimq.connect(sqs_url + f"&aws_access_key_id=AKIDEXAMPLE&aws_secret_access_key={secret}") as b:
        assert secret not in repr(b) and secret not in b.url
        with pytest.raises(unimq.UnimqError) as info:
            await b.stats(f"missing-{secret}")
        assert secret not in str(info.value)


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("InvalidClientTokenId", 403, unimq.AuthenticationError),
    ("SignatureDoesNotMatch", 403, unimq.AuthenticationError),
    ("AccessDenied", 403, unimq.PermissionDenied),
    ("AWS.SimpleQueueService.NonExistentQueue", 400, unimq.NotFound),
    ("ThrottlingException", 400, unimq.Throttled),
    ("RequestThrottled", 403, unimq.Throttled),
    ("QueueDeletedRecently", 400, unimq.Throttled),
    ("ServiceUnavailable", 503, unimq.BrokerConnectionError),
    ("SomethingNew", 500, unimq.BrokerConnectionError),
    ("InvalidParameterValue", 400, unimq.UnimqError),
])
async def test_error_table(broker: unimq.Broker, code: str, status: int, expected: type[unimq.UnimqError]) -> None:
    """AWS error codes (ElasticMQ accepts any credentials, so these are built, not provoked)."""
    exc = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                      "SendMessage")
    error = broker._driver.map_error(exc, "publish to q")
    assert type(error) is expected
    assert error.retryable == (expected in (unimq.Throttled, unimq.BrokerConnectionError))


async def test_ensure_fields(broker: unimq.Broker, boto: Any, name: str) -> None:
    """What SQS cannot honour is refused by the core; lock_timeout and retention become queue attributes."""
    for field, value in (("replication", 2), ("partitions", 2), ("fifo", True), ("sessions", True),
                         ("max_priority", 3), ("lock_timeout", timedelta(hours=13))):
        with pytest.raises(unimq.CapabilityError, match=field):
            await broker.ensure(name, **{field: value})
    with pytest.raises(unimq.CapabilityError, match="retention"):
        await broker.ensure(name, retention=timedelta(seconds=30))
    sent: list[dict[str, str]] = []

    def record(model: Any, params: Any, **_: Any) -> None:
        if model.name == "CreateQueue" and params["QueueName"] == name:
            sent.append(params["Attributes"])

    broker.native.meta.events.register("before-parameter-build.sqs", record, unique_id="t-ensure-fields")
    try:
        await broker.ensure(name, lock_timeout=timedelta(seconds=7), retention=timedelta(hours=2))
    finally:
        broker.native.meta.events.unregister("before-parameter-build.sqs", unique_id="t-ensure-fields")
    assert sent[0]["VisibilityTimeout"] == "7" and sent[0]["MessageRetentionPeriod"] == "7200"
    url = boto.get_queue_url(QueueName=name)["QueueUrl"]  # ElasticMQ keeps the visibility, not the retention
    assert boto.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]["VisibilityTimeout"] == "7"
    async with broker.consumer(name) as queue_lock, broker.consumer(name, lock_timeout=3) as own_lock:
        assert (queue_lock.subscription.lock_timeout, own_lock.subscription.lock_timeout) == (7.0, 3.0)


async def test_close_is_prompt_and_releases_at_once(broker: unimq.Broker, name: str) -> None:
    """close() does not wait for the long polls in flight (wait_time 2 s); what they bring back
    after close, and what was held, is visible again at once, not after the 30 s visibility."""
    await broker.ensure(name)
    await broker.producer(name).send_many([b"a", b"b"])
    async with broker.consumer(name, prefetch=10, lock_timeout=30) as consumer:
        held = await consumer.receive(timeout=5)
        assert held is not None
        await asyncio.sleep(0.2)  # the other message arrives in the buffer; a poll is in flight
        started = time.monotonic()
        await consumer.close()
        closed_in = time.monotonic() - started
    assert closed_in < 0.5, f"close took {closed_in:.2f}s"
    idle = broker.consumer(name, lock_timeout=30)
    await idle.receive(timeout=0.1)  # starts 2 s long polls; whatever it takes, close hands back
    await idle.close()
    await broker.producer(name).send(b"c")  # may be taken by the poll still in flight: released
    async with broker.consumer(name, lock_timeout=30) as again:
        got: list[unimq.Delivery] = []
        deadline = time.monotonic() + 6
        while len(got) < 3 and time.monotonic() < deadline:
            got += await again.receive_many(3 - len(got), timeout=1)
        assert sorted(d.message.body for d in got) == [b"a", b"b", b"c"]
        await again.ack_many(got)


async def test_unreachable_endpoint_is_a_retryable_connection_error() -> None:
    async with unimq.connect("sqs://?endpoint_url=http://127.0.0.1:9&region=us-east-1") as b:
        with pytest.raises(unimq.PublishError) as info:
            await b.producer("nowhere").send(b"x")
        assert isinstance(info.value.results[0], unimq.ConnectionError)
        assert info.value.retryable


async def test_redrive_policy_and_reason(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name, max_deliveries=1, lock_timeout=timedelta(seconds=30))
    await broker.producer(name).send(b"poison", headers={"k": "v"})
    async with broker.consumer(name) as consumer:
        first = await consumer.receive(timeout=5)
        assert first is not None and first.attempt == 1
        await first.nack()
        assert await consumer.receive(timeout=1.5) is None  # moved by SQS on the next receive
    dlq = broker._driver.dead_letter_destination(name)
    async with broker.consumer(dlq) as consumer:
        dead = await consumer.receive(timeout=5)
        assert dead is not None and dead.message.body == b"poison"
        assert dead.message.headers["k"] == "v"
        assert "maxReceiveCount" in dead.message.headers[DEAD_LETTER_REASON]
        assert dead.message.headers[DEAD_LETTER_SOURCE] == name
        await dead.ack()
    assert (await broker.stats(name)).dead_letter_depth == 0


async def test_reject_sends_then_deletes(broker: unimq.Broker, name: str) -> None:
    """SQS has no reject call: the core sends a copy to the dead-letter queue, then deletes."""
    await broker.ensure(name, dead_letter=False)
    sent = await broker.producer(name).send(b"bad", correlation_id="c")
    async with broker.consumer(name, lock_timeout=1) as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None
        with pytest.raises(unimq.PublishError, match="-dlq") as refused:  # no dead-letter queue: nothing is lost
            await got.reject("unparseable")
        assert isinstance(refused.value.__cause__, unimq.NotFound)
        await broker.ensure(name)
        got = await consumer.receive(timeout=5)
        assert got is not None and got.attempt == 2
        await got.reject("unparseable")
    stats = await broker.stats(name)
    assert (stats.depth, stats.in_flight, stats.dead_letter_depth) == (0, 0, 1)
    async with broker.consumer(broker._driver.dead_letter_destination(name)) as consumer:
        dead = await consumer.receive(timeout=5)
        assert dead is not None
        assert (dead.message.message_id, dead.message.correlation_id) == (sent.message_id, "c")
        assert dead.message.headers[DEAD_LETTER_REASON] == "unparseable"
        await dead.ack()


async def test_lock_is_visibility(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    await broker.producer(name).send(b"slow")
    async with broker.consumer(name, lock_timeout=2) as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None
        await got.extend(timedelta(seconds=4))
        assert await consumer.receive(timeout=2.5) is None  # extended past the 2 s lock
        again = await consumer.receive(timeout=5)
        assert again is not None and again.attempt == 2
        await again.nack(delay=timedelta(seconds=2))
        assert await consumer.receive(timeout=1) is None
        third = await consumer.receive(timeout=5)
        assert third is not None and third.attempt == 3
        with pytest.raises(unimq.CapabilityError, match="43200"):
            await third.nack(delay=timedelta(hours=13))
        await got.ack()  # a stale receipt handle: must not raise
        await third.ack()
