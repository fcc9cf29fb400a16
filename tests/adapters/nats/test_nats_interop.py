"""unimq and plain nats-py JetStream read each other's messages, both directions."""

from __future__ import annotations

import uuid

from nats.aio.client import Client
from nats.js import api
from unimq_nats.mapping import stream_name

import unimq


async def test_plain_publish_unimq_consume(broker: unimq.Broker, raw: Client, dest: str) -> None:
    await broker.ensure(dest, groups=("billing",))
    js = raw.jetstream()
    await js.publish(dest, b"with-id", headers={"Nats-Msg-Id": "m-1", "Content-Type": "text/plain",
                                                "Correlation-Id": "c-9", "tenant": "acme"})
    await js.publish(dest, b"bare")
    async with broker.consumer(dest, "billing") as consumer:
        first = await consumer.receive(timeout=5)
        second = await consumer.receive(timeout=5)
        assert first is not None and second is not None
        assert first.message.body == b"with-id"
        assert first.message.message_id == "m-1"
        assert first.message.content_type == "text/plain"
        assert first.message.correlation_id == "c-9"
        assert first.message.headers == {"tenant": "acme"}
        assert first.message.timestamp is not None
        assert first.attempt == 1
        assert second.message.body == b"bare" and second.message.headers == {}
        assert second.message.message_id  # stable id derived from stream and sequence
        await first.ack()
        await second.nack()
        again = await consumer.receive(timeout=5)
        assert again is not None and again.message.message_id == second.message.message_id
        assert again.attempt == 2
        await again.ack()
    native_msg = first.native
    assert native_msg.metadata.stream == stream_name(dest)


async def test_unimq_publish_plain_consume(broker: unimq.Broker, raw: Client, dest: str) -> None:
    producer = broker.producer(dest)
    sent = await producer.send(b"\x00binary\xff", key="k-1", headers={"h": "v"}, correlation_id="c-1",
                               content_type="application/octet-stream")
    await producer.send_many([b"a", b"b", b"c"])
    js = raw.jetstream()
    sub = await js.pull_subscribe(dest, durable="plain", stream=stream_name(dest))
    msgs = await sub.fetch(4, timeout=5)
    assert [m.data for m in msgs] == [b"\x00binary\xff", b"a", b"b", b"c"]
    headers = msgs[0].headers or {}
    assert headers["Message-Id"] == sent.message_id  # Nats-Msg-Id only where deduplication was ensured
    assert headers["Message-Key"] == "k-1"
    assert headers["Correlation-Id"] == "c-1"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["h"] == "v"
    for m in msgs:
        await m.ack()


async def test_existing_stream_by_option(raw: Client) -> None:
    """?stream=NAME: unimq uses a stream the application made, and a durable it already has."""
    name = f"APP_{uuid.uuid4().hex[:8]}"
    subject = f"app.{name.lower()}.orders"
    js = raw.jetstream()
    await js.add_stream(name=name, subjects=[f"app.{name.lower()}.>"])
    try:
        await js.add_consumer(name, api.ConsumerConfig(durable_name="workers", filter_subject=subject,
                                                       ack_policy=api.AckPolicy.EXPLICIT))
        await js.publish(subject, b"from-app")
        async with unimq.connect(f"nats://127.0.0.1:4222?stream={name}") as broker:
            await broker.producer(subject).send(b"from-unimq")
            async with broker.consumer(subject, "workers") as consumer:
                got = [await consumer.receive(timeout=5) for _ in range(2)]
                assert [d.message.body for d in got if d] == [b"from-app", b"from-unimq"]
                for d in got:
                    assert d is not None
                    await d.ack()
            assert subject in await broker.destinations()
            await broker.delete(subject)
        info = await js.stream_info(name)
        assert info.state.messages == 0  # purged, the stream itself is the application's
    finally:
        await js.delete_stream(name)


async def test_escape_hatches(broker: unimq.Broker, dest: str) -> None:
    from nats.aio.client import Client as NatsClient

    assert isinstance(broker.native, NatsClient)
    await broker.producer(dest).send(b"x")
    info = await broker.native.jetstream().stream_info(stream_name(dest))
    assert info.state.messages == 1
