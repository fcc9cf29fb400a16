"""OpenTelemetry on real brokers: a producer → consumer span tree, context through a handler that
sends on (as a mirror does), and metric values that match the messages sent."""

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import unimq
from unimq import telemetry


@pytest.fixture(scope="module")
def otel() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    telemetry.enable(tracer_provider, MeterProvider(metric_readers=[reader]))
    yield exporter, reader
    telemetry.disable()


def metric(reader: InMemoryMetricReader, name: str, destination: str) -> float:
    total = 0.0
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for m in scope.metrics:
                if m.name == name:
                    for point in m.data.data_points:
                        if point.attributes.get("messaging.destination.name") == destination:
                            total += getattr(point, "value", getattr(point, "count", 0))
    return total


def spans(exporter: InMemorySpanExporter, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_producer_consumer_span_tree_and_metrics(broker: unimq.Broker, names: Any, otel: Any) -> None:
    exporter, reader = otel
    dest = names.dest
    await broker.ensure(dest)
    async with broker.consumer(dest) as consumer:
        await broker.producer(dest).send_many([b"a", b"b", b"c"])
        got = await consumer.receive_many(3, timeout=30)
        for delivery in got:
            await delivery.ack()
    assert len(got) == 3
    (send,) = spans(exporter, f"send {dest}")
    processed = spans(exporter, f"process {dest}")
    assert len(processed) == 3
    assert send.attributes["messaging.batch.message_count"] == 3
    assert send.attributes["messaging.destination.name"] == dest
    for span in processed:
        assert span.context.trace_id == send.context.trace_id
        assert span.parent is not None and span.parent.span_id == send.context.span_id
        assert span.attributes["unimq.settlement"] == "ack"
    assert metric(reader, "unimq.messages.published", dest) == 3
    assert metric(reader, "unimq.messages.consumed", dest) == 3
    assert metric(reader, "unimq.messages.acked", dest) == 3
    assert metric(reader, "unimq.messages.in_flight", dest) == 0


@pytest.mark.requires("persistence")
async def test_context_flows_through_a_forwarding_handler(broker: unimq.Broker, names: Any, otel: Any) -> None:
    exporter, _ = otel
    source, target = names(), names()
    await broker.ensure(source)
    await broker.ensure(target)
    forward = broker.producer(target)
    stop = asyncio.Event()

    async def mirror(delivery: unimq.Delivery) -> None:
        await forward.send(delivery.message)
        stop.set()

    await broker.producer(source).send(b"hop")
    await asyncio.wait_for(broker.consume(source, mirror, stop=stop), 60)
    async with broker.consumer(target) as consumer:
        delivery = await consumer.receive(timeout=30)
        assert delivery is not None
        await delivery.ack()
    (first,) = spans(exporter, f"send {source}")
    (hop,) = spans(exporter, f"process {source}")
    (second,) = spans(exporter, f"send {target}")
    (last,) = spans(exporter, f"process {target}")
    assert {s.context.trace_id for s in (first, hop, second, last)} == {first.context.trace_id}
    assert hop.parent.span_id == first.context.span_id
    assert second.parent.span_id == hop.context.span_id
    assert last.parent.span_id == second.context.span_id
