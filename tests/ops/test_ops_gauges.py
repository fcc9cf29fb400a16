"""unimq.gauges: the observable gauges and the latency histogram, read with an in-memory OTel reader."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

import unimq
from unimq import gauges, telemetry
from unimq.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def reader() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    r = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[r])
    yield r, provider
    telemetry.disable()
    provider.shutdown()


@pytest.fixture
async def broker() -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(f"memory://gauges-{uuid.uuid4().hex[:8]}") as b:
        await b.ensure("orders", dead_letter=True)
        await b.ensure("audit")
        yield b


def points(r: InMemoryMetricReader) -> dict[str, dict[str, Any]]:
    """metric name → destination → value (a gauge) or (count, sum) (a histogram)."""
    out: dict[str, dict[str, Any]] = {}
    data = r.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    dest = str(p.attributes["messaging.destination.name"]) if p.attributes else "?"
                    value = (p.count, p.sum) if isinstance(p, HistogramDataPoint) else getattr(p, "value", None)
                    out.setdefault(metric.name, {})[dest] = value
    return out


async def test_depth_in_flight_dead_letters_age_and_latency(broker: unimq.Broker, reader: Any) -> None:
    r, provider = reader
    await broker.producer("orders").send_many([b"a", b"b", b"c"])
    await asyncio.sleep(0.2)  # the oldest message is at least this old
    g = await gauges.observe(broker, ["orders", "audit"], interval=0.1, meter_provider=provider)
    try:
        consumer = broker.consumer("orders", prefetch=1)
        async with consumer:
            first = await consumer.receive(timeout=1)
            assert first is not None
            await first.reject("bad")
            held = await consumer.receive(timeout=1)
            assert held is not None
            await g.poll()
            seen = points(r)
            assert seen["unimq.destination.depth"] == {"orders": 1, "audit": 0}
            assert seen["unimq.destination.in_flight"]["orders"] == 1
            assert seen["unimq.destination.dead_letter_depth"]["orders"] == 1
            assert seen["unimq.destination.oldest_age"]["audit"] == 0.0
            assert 0.2 <= seen["unimq.destination.oldest_age"]["orders"] < 10
            count, total = seen["unimq.message.latency"]["orders"]
            assert count == 2 and 0.2 <= total < 20  # each waited at least 0.2 s since its send
            assert "unimq.consumer.lag" not in seen  # memory:// has no lag: nothing rather than a made-up 0
            await held.ack()
    finally:
        await g.close()
    assert telemetry.current is None  # observe() turned telemetry on for the histogram, close() off again


async def test_polling_is_bounded_and_collection_is_free(broker: unimq.Broker, reader: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    r, provider = reader
    calls: list[str] = []
    real = unimq.Broker.stats

    async def counted(self: unimq.Broker, destination: str, group: str | None = None) -> Any:
        calls.append(destination)
        return await real(self, destination, group)

    monkeypatch.setattr(unimq.Broker, "stats", counted)
    async with await gauges.observe(broker, ["orders", "audit"], interval=0.1, meter_provider=provider,
                                    latency=False) as g:
        for _ in range(20):
            points(r)  # collections read the cache only
        await asyncio.sleep(0.55)
        polls = g.polls
    assert 5 <= polls <= 7
    assert len(calls) in (2 * polls, 2 * polls + 2)  # one stats call per destination per poll
    assert points(r).get("unimq.destination.depth", {}) == {}  # closed: nothing reported any more


async def test_latency_is_not_recorded_without_gauges(broker: unimq.Broker, reader: Any) -> None:
    _, provider = reader
    tel = telemetry.enable(meter_provider=provider)
    assert tel.latency is None
    g = await gauges.observe(broker, ["orders"], meter_provider=provider)
    assert tel.latency is not None and telemetry.current is tel
    await g.close()
    assert tel.latency is None and telemetry.current is tel  # telemetry stays as the app set it


@pytest.mark.parametrize("args,words", [
    ({"destinations": "orders"}, "non-empty list"),
    ({"destinations": []}, "non-empty list"),
    ({"destinations": ["orders"], "interval": 0}, "interval must be > 0"),
    ({"destinations": ["orders"], "interval": 0.01}, "at least 0.1"),
])
async def test_bad_arguments(broker: unimq.Broker, args: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        await gauges.observe(broker, **args)


@pytest.mark.needs_broker("redis")
async def test_lag_of_a_group_and_no_age_on_a_log(broker_url: Any, reader: Any) -> None:
    r, provider = reader
    dest = f"gauges-{uuid.uuid4().hex[:8]}"
    async with unimq.connect(broker_url("redis")) as b:
        await b.ensure(dest, groups=("billing",))
        try:
            await b.producer(dest).send_many([b"1", b"2", b"3"])
            async with await gauges.observe(b, [dest], group="billing", interval=1, meter_provider=provider,
                                            latency=False):
                seen = points(r)
                assert seen["unimq.consumer.lag"] == {dest: 3}
                assert dest not in seen.get("unimq.destination.oldest_age", {})
        finally:
            await b.delete(dest)
