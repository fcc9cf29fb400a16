"""Built-in OpenTelemetry gauges for queues, opt-in with one call.

    gauges = await unimq.gauges.observe(broker, destinations=["orders"], group="billing", interval=15)
    ...
    await gauges.close()

Observable gauges ``unimq.destination.depth``, ``.in_flight``, ``.dead_letter_depth``,
``unimq.consumer.lag`` and ``unimq.destination.oldest_age`` (seconds), plus the histogram
``unimq.message.latency``: seconds from the send timestamp to receipt, recorded where
:mod:`unimq.telemetry` records receipts. The polling cost is bounded: one ``stats`` call per
destination per ``interval`` (and one ``peek`` of one message where the age of the oldest message
needs it), in one background task; the gauges' callbacks — run by the metric reader, on its own
schedule and thread — only read the cached values. Nothing is polled or recorded until
:func:`observe` is called.

The age of the oldest message is reported where the backend can tell: a queue (its ``stats``
has no per-group lag) that can be peeked, whose head is the oldest waiting message. A log
(Kafka, Redis Streams, NATS JetStream) keeps its head long after a group read it, so no age is
reported there rather than a wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unimq import __version__, durations, telemetry
from unimq.errors import ConfigError, UnimqError

if TYPE_CHECKING:
    from unimq.broker import Broker

log = logging.getLogger("unimq.gauges")

#: Shortest polling interval: a dashboard does not need more, and the broker pays for each poll.
MIN_INTERVAL = 0.1


@dataclass(frozen=True)
class Reading:
    """What one poll of one destination found (``None``: the backend cannot tell)."""

    depth: int | None
    in_flight: int | None
    dead_letter_depth: int | None
    lag: int | None
    oldest_age: float | None


class Gauges:
    """The gauges of one broker; :meth:`close` stops the polling and the latency histogram."""

    def __init__(self, broker: Broker, destinations: Sequence[str], group: str | None, interval: float,
                 meter_provider: Any, latency: bool) -> None:
        from opentelemetry import metrics

        self.broker = broker
        self.destinations = tuple(destinations)
        self.group = group
        self.interval = interval
        self.readings: dict[str, Reading] = {}
        self.polls = 0
        self._task: asyncio.Task[None] | None = None
        self._enabled_telemetry = False
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("unimq.gauges", __version__)
        for name, field, unit, text in (
            ("unimq.destination.depth", "depth", "{message}", "messages waiting"),
            ("unimq.destination.in_flight", "in_flight", "{message}", "received, not yet settled"),
            ("unimq.destination.dead_letter_depth", "dead_letter_depth", "{message}", "dead-lettered messages"),
            ("unimq.consumer.lag", "lag", "{message}", "messages the group has not read yet"),
            ("unimq.destination.oldest_age", "oldest_age", "s", "age of the oldest waiting message"),
        ):
            meter.create_observable_gauge(name, [self._callback(field)], unit=unit, description=text)
        self._histogram = None
        if latency:
            tel = telemetry.current
            if tel is None:
                tel = telemetry.enable(meter_provider=meter_provider)
                self._enabled_telemetry = True
            self._histogram = meter.create_histogram(
                "unimq.message.latency", "s", "end to end: from the send timestamp to receipt")
            tel.latency = self._histogram

    def _callback(self, field: str) -> Callable[[Any], Iterable[Any]]:
        from opentelemetry.metrics import Observation

        def observe(_options: Any) -> Iterable[Any]:
            out = []
            for destination, reading in list(self.readings.items()):
                value = getattr(reading, field)
                if value is not None:
                    attrs = telemetry.Telemetry.attributes(self.broker.backend, destination, self.group)
                    out.append(Observation(value, attrs))
            return out

        return observe

    async def poll(self) -> None:
        """Read every destination once (``stats``, and ``peek`` of one for the age) into the cache."""
        for destination in self.destinations:
            try:
                self.readings[destination] = await self._read(destination)
            except UnimqError as exc:
                self.readings.pop(destination, None)  # no value rather than a stale one
                log.warning("gauges: %s: %s: %s", destination, type(exc).__name__, exc)
        self.polls += 1

    async def _read(self, destination: str) -> Reading:
        stats = await self.broker.stats(destination, self.group)
        age: float | None = None
        queue_like = stats.lag is None and stats.depth is not None
        if queue_like and stats.depth == 0:
            age = 0.0
        elif queue_like and self.broker.capabilities_for(destination).peek:
            head = await self.broker.peek(destination, 1)
            if head and head[0].timestamp is not None:
                age = max(0.0, time.time() - head[0].timestamp.timestamp())
        return Reading(stats.depth, stats.in_flight, stats.dead_letter_depth, stats.lag, age)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.poll()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="unimq-gauges")

    async def close(self) -> None:
        """Stop polling and recording; the gauges report nothing from now on."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.readings.clear()
        tel = telemetry.current
        if tel is not None and tel.latency is self._histogram:
            tel.latency = None
        if self._enabled_telemetry and telemetry.current is tel:
            telemetry.disable()

    async def __aenter__(self) -> Gauges:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def observe(broker: Broker, destinations: Sequence[str], *, group: str | None = None,
                  interval: float = 15.0, meter_provider: Any = None, latency: bool = True) -> Gauges:
    """Start the gauges of ``destinations`` (as seen by ``group``), polled every ``interval`` seconds.

    Polls once before returning, so the first collection has values. ``latency`` also records
    ``unimq.message.latency`` on every receipt in this process, turning :mod:`unimq.telemetry` on
    if it is off (and off again at :meth:`Gauges.close`). Needs ``opentelemetry-api``
    (``pip install "unimq[otel]"``)."""
    if isinstance(destinations, str) or not destinations:
        raise ConfigError("gauges: destinations must be a non-empty list of names, e.g. destinations=['orders']")
    seconds = durations.seconds(interval, "interval", allow_zero=False)
    if seconds < MIN_INTERVAL:
        raise ConfigError(f"gauges: interval must be at least {MIN_INTERVAL}s, got {seconds:g}")
    try:
        gauges = Gauges(broker, destinations, group, seconds, meter_provider, latency)
    except ImportError:
        raise ConfigError('gauges need OpenTelemetry: pip install "unimq[otel]"') from None
    await gauges.poll()
    gauges.start()
    return gauges
