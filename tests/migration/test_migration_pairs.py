"""Migration across real brokers of different models: RabbitMQ → Kafka, SQS → Service Bus (the
double), Redis Streams → NATS JetStream. For each pair: dual-publish, mirror in both directions
without loops, merged consumption, and verify reporting zero missing."""

import asyncio
import uuid

import pytest

import unimq
from unimq.migrate import DualProducer, MergedConsumer, Mirror, verify

PAIRS = [("rabbitmq", "kafka"), ("sqs", "servicebus"), ("redis", "nats")]


def group_for(broker: unimq.Broker, dest: str, name: str) -> str | None:
    return name if broker.capabilities_for(dest).fanout else None


@pytest.fixture(params=PAIRS, ids=lambda p: f"{p[0]}-to-{p[1]}")
async def pair(request: pytest.FixtureRequest, broker_url):
    old_target, new_target = request.param
    async with unimq.connect(broker_url(old_target)) as old, unimq.connect(broker_url(new_target)) as new:
        yield old, new


async def provision(broker: unimq.Broker, dest: str) -> None:
    groups = tuple(g for g in ("unimq-verify", "unimq-mirror", "app") if group_for(broker, dest, g))
    await broker.ensure(dest, groups=groups)


async def test_dual_publish_then_verify(pair) -> None:
    old, new = pair
    dest = f"mig-{uuid.uuid4().hex[:8]}"
    await provision(old, dest)
    await provision(new, dest)
    try:
        dual = DualProducer(old.producer(dest), new.producer(dest), policy="both")
        await dual.send_many([unimq.Message(f"{i}".encode(), key=f"k{i % 4}") for i in range(60)])
        report = await verify(old, dest, new, dest, idle=3.0)
        assert report.missing == [] and report.extra == [], report.summary()
        assert report.old_count == report.new_count == 60
    finally:
        await old.delete(dest)
        await new.delete(dest)


async def test_dual_publish_then_merged_consumption(pair) -> None:
    old, new = pair
    dest = f"mrg-{uuid.uuid4().hex[:8]}"
    await provision(old, dest)
    await provision(new, dest)
    try:
        dual = DualProducer(old.producer(dest), new.producer(dest), policy="both")
        sent = await dual.send_many([f"{i}".encode() for i in range(60)])
        processed: list[str] = []
        async with MergedConsumer(old.consumer(dest, group_for(old, dest, "app")),
                                  new.consumer(dest, group_for(new, dest, "app"))) as merged:
            while (delivery := await merged.receive(timeout=5)) is not None:
                processed.append(delivery.message.message_id)
                await delivery.ack()
        assert sorted(processed) == sorted(m.message_id for m in sent)  # each once, none twice
    finally:
        await old.delete(dest)
        await new.delete(dest)


async def test_mirror_both_directions_no_loop(pair) -> None:
    old, new = pair
    dest = f"mir-{uuid.uuid4().hex[:8]}"
    await provision(old, dest)
    await provision(new, dest)
    try:
        await old.producer(dest).send_many([f"old-{i}".encode() for i in range(40)])
        await new.producer(dest).send_many([f"new-{i}".encode() for i in range(10)])
        forward = Mirror(old, dest, new, dest, origin="old", target_origin="new")
        backward = Mirror(new, dest, old, dest, origin="new", target_origin="old")
        there, back = await asyncio.gather(forward.run(idle=4.0), backward.run(idle=4.0))
        assert there.forwarded == 40 and back.forwarded == 10
        assert there.skipped_loops == 10 and back.skipped_loops == 40
        if old.capabilities_for(dest).fanout and new.capabilities_for(dest).fanout:
            # Without fan-out a mirror's reads consume the queue, so only fan-out pairs can verify after.
            report = await verify(old, dest, new, dest, idle=3.0)
            assert report.ok() and report.old_count == report.new_count == 50, report.summary()
    finally:
        await old.delete(dest)
        await new.delete(dest)
