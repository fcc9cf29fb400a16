"""OpenTelemetry traces and metrics for every backend, off until :func:`enable` is called.

    import unimq.telemetry
    unimq.telemetry.enable()            # uses the global tracer and meter providers

Spans follow the OpenTelemetry messaging conventions: a PRODUCER span ``send <destination>`` per
send or batch, whose W3C ``traceparent``/``tracestate`` travel in the message headers on every
backend; a CONSUMER span ``process <destination>`` per delivery that continues the producer's
trace and ends at settlement. The handler runner runs each handler inside its delivery's span, so
messages a handler sends (a mirror, a reply) are children of it.

When telemetry is off the core pays one ``is None`` check per operation; the ``opentelemetry``
packages (extra ``unimq[otel]``) are imported only by :func:`enable`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unimq.errors import UnimqError
    from unimq.message import Delivery, Message

#: The Telemetry in force, or None. Read on the hot path; set only by enable()/disable().
current: Telemetry | None = None

# Backend name -> OpenTelemetry ``messaging.system`` value.
_SYSTEMS = {"sqs": "aws_sqs", "servicebus": "servicebus", "nats": "nats", "memory": "unimq_memory"}


def enable(tracer_provider: Any = None, meter_provider: Any = None) -> Telemetry:
    """Turn tracing and metrics on for every broker in this process."""
    global current  # noqa: PLW0603 - one process-wide switch, read on the hot path
    current = Telemetry(tracer_provider, meter_provider)
    return current


def disable() -> None:
    global current  # noqa: PLW0603
    current = None


class Telemetry:
    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from opentelemetry import metrics, propagate, trace

        from unimq import __version__

        self._trace = trace
        self._propagator = propagate.get_global_textmap()
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("unimq", __version__)
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("unimq", __version__)
        self.published = meter.create_counter("unimq.messages.published", "{message}", "accepted by the broker")
        self.publish_failed = meter.create_counter("unimq.messages.publish_failed", "{message}", "messages not sent")
        self.consumed = meter.create_counter("unimq.messages.consumed", "{message}", "deliveries handed to the app")
        self.acked = meter.create_counter("unimq.messages.acked", "{message}")
        self.nacked = meter.create_counter("unimq.messages.nacked", "{message}")
        self.dead_lettered = meter.create_counter("unimq.messages.dead_lettered", "{message}")
        self.retried = meter.create_counter("unimq.messages.retried", "{message}", "handler failures retried")
        self.in_flight = meter.create_up_down_counter("unimq.messages.in_flight", "{message}", "received, unsettled")
        self.publish_duration = meter.create_histogram("unimq.publish.duration", "s", "send/send_many latency")
        self.handler_duration = meter.create_histogram("unimq.handler.duration", "s", "handler run time")
        #: ``unimq.message.latency``, set by :func:`unimq.gauges.observe` (None: not recorded).
        self.latency: Any = None
        self.kill_switch = meter.create_counter("unimq.kill_switch.changes", "{change}",
                                                "handler-runner kill switch state changes, by unimq.kill_switch.state")

    @staticmethod
    def attributes(backend: str, destination: str, group: str | None = None) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "messaging.system": _SYSTEMS.get(backend, backend),
            "messaging.destination.name": destination,
        }
        if group:
            attrs["messaging.consumer.group.name"] = group
        return attrs

    @contextmanager
    def publishing(
        self, backend: str, destination: str, messages: Sequence[Message], inject: bool
    ) -> Iterator[list[tuple[Message, UnimqError]]]:
        """A PRODUCER span around one publish; the caller fills the yielded list with failures."""
        attrs = self.attributes(backend, destination)
        attrs["messaging.operation.type"] = "send"
        attrs["messaging.batch.message_count"] = len(messages)
        if len(messages) == 1:
            attrs["messaging.message.id"] = messages[0].message_id
        trace = self._trace
        span = self.tracer.start_span(f"send {destination}", kind=trace.SpanKind.PRODUCER, attributes=attrs)
        if inject:
            ctx = trace.set_span_in_context(span)
            for message in messages:
                self._propagator.inject(message.headers, context=ctx)
        failed: list[tuple[Message, UnimqError]] = []
        started = time.perf_counter()
        try:
            yield failed
        finally:
            metric_attrs = self.attributes(backend, destination)
            self.publish_duration.record(time.perf_counter() - started, metric_attrs)
            self.published.add(len(messages) - len(failed), metric_attrs)
            if failed:
                self.publish_failed.add(len(failed), metric_attrs)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(failed[0][1])))
                span.set_attribute("error.type", type(failed[0][1]).__name__)
            span.end()

    def received(self, backend: str, destination: str, group: str | None, delivery: Delivery) -> None:
        """Start the CONSUMER span of a delivery, continuing the producer's trace."""
        attrs = self.attributes(backend, destination, group)
        attrs["messaging.operation.type"] = "process"
        attrs["messaging.message.id"] = delivery.message.message_id
        attrs["messaging.message.delivery_attempt"] = delivery.attempt
        if delivery.message.correlation_id:
            attrs["messaging.message.conversation_id"] = delivery.message.correlation_id
        parent = self._propagator.extract(delivery.message.headers)
        delivery.span = self.tracer.start_span(
            f"process {destination}", context=parent, kind=self._trace.SpanKind.CONSUMER, attributes=attrs
        )
        metric_attrs = self.attributes(backend, destination, group)
        self.consumed.add(1, metric_attrs)
        self.in_flight.add(1, metric_attrs)
        sent = delivery.message.timestamp
        if self.latency is not None and sent is not None:
            self.latency.record(max(0.0, time.time() - sent.timestamp()), metric_attrs)

    def settled(self, backend: str, destination: str, group: str | None, delivery: Delivery, outcome: str) -> None:
        metric_attrs = self.attributes(backend, destination, group)
        self.in_flight.add(-1, metric_attrs)
        counter = {"ack": self.acked, "nack": self.nacked, "reject": self.dead_lettered}[outcome]
        counter.add(1, metric_attrs)
        span = delivery.span
        if span is not None:
            span.set_attribute("unimq.settlement", outcome)
            if outcome == "reject":
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "dead-lettered"))
            span.end()
            delivery.span = None

    def kill_switch_changed(
        self, backend: str, destination: str, group: str | None, state: str, failure_ratio: float
    ) -> None:
        """A runner's kill switch changed state: count it, and record it as a span event."""
        attrs = self.attributes(backend, destination, group)
        attrs["unimq.kill_switch.state"] = state
        self.kill_switch.add(1, attrs)
        span = self.tracer.start_span(f"kill_switch {destination}", attributes=attrs)
        span.add_event(f"unimq.kill_switch.{state}", {"unimq.kill_switch.failure_ratio": failure_ratio})
        span.end()

    @contextmanager
    def handling(self, backend: str, destination: str, group: str | None, delivery: Delivery) -> Iterator[None]:
        """Run a handler inside its delivery's span, and time it."""
        from opentelemetry import context

        token = None
        if delivery.span is not None:
            token = context.attach(self._trace.set_span_in_context(delivery.span))
        started = time.perf_counter()
        try:
            yield
        finally:
            self.handler_duration.record(time.perf_counter() - started, self.attributes(backend, destination, group))
            if token is not None:
                context.detach(token)
