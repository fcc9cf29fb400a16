"""``unimq bench URL``: throughput and latency of any backend through unimq.

Workloads, each on a fresh destination:

- **produce**: ``count`` messages of ``size`` bytes, with ``send_many`` batches of 100 (batching
  on) or one ``send`` at a time (off), from ``concurrency`` tasks;
- **consume**: the same messages, pre-filled (not timed), read and acked by ``concurrency``
  consumers of one group;
- **latency**: end-to-end (send → receive) at a fixed offered rate, reported as p50 and p99.

The raw-client and peer-library comparisons live in ``benchmarks/``; they reuse these workloads'
shapes so that every figure can be a ratio to the raw client measured in the same run.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import unimq
from unimq.broker import Broker
from unimq.errors import ConfigError, MessageTooLarge

SENT_AT = "x-bench-sent-ns"


@dataclass(frozen=True)
class Workload:
    size: int = 1024
    count: int = 10_000
    batch: bool = True
    concurrency: int = 1

    def label(self) -> str:
        return f"{self.size}B batch={'on' if self.batch else 'off'} c={self.concurrency}"


@dataclass
class Result:
    backend: str
    workload: str
    metric: str
    value: float
    unit: str


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def produce(broker: Broker, destination: str, w: Workload) -> float:
    body = b"x" * w.size
    producer = broker.producer(destination)

    async def worker(n: int) -> None:
        if w.batch:
            for start in range(0, n, 100):
                await producer.send_many([body] * min(100, n - start))
        else:
            for _ in range(n):
                await producer.send(body)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in _split(w.count, w.concurrency)))
    return w.count / (time.perf_counter() - started)


async def consume(broker: Broker, destination: str, w: Workload, group: str | None) -> float:
    remaining = w.count
    done = asyncio.Event()

    async def worker() -> None:
        nonlocal remaining
        async with broker.consumer(destination, group, prefetch=500) as consumer:
            while remaining > 0:
                delivery = await consumer.receive(timeout=1.0)
                if delivery is None:
                    continue
                await delivery.ack()
                remaining -= 1
            done.set()

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(w.concurrency)]
    await done.wait()
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return w.count / elapsed


async def latency(broker: Broker, destination: str, size: int, rate: float, seconds: float,
                  group: str | None) -> tuple[float, float]:
    """p50 and p99 end-to-end latency in milliseconds at ``rate`` messages per second."""
    samples: list[float] = []
    total = int(rate * seconds)
    async with broker.consumer(destination, group, prefetch=500) as consumer:
        async def receive() -> None:
            while len(samples) < total:
                delivery = await consumer.receive(timeout=5.0)
                if delivery is None:
                    break
                samples.append((time.perf_counter_ns() - int(delivery.message.headers[SENT_AT])) / 1e6)
                await delivery.ack()

        receiver = asyncio.create_task(receive())
        producer = broker.producer(destination)
        body = b"x" * size
        started = time.perf_counter()
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            await producer.send(body, headers={SENT_AT: str(time.perf_counter_ns())})
        await asyncio.wait_for(receiver, timeout=30)
    if len(samples) < 2:
        return float("nan"), float("nan")
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49], cuts[98]


def _check(workloads: list[Workload], repeat: int, rate: float, latency_seconds: float) -> None:
    """ConfigError for a run that could not measure anything (or would not end)."""
    if not workloads:
        raise ConfigError("bench: no workloads (give at least one size)")
    if repeat < 1:
        raise ConfigError(f"bench: repeat must be at least 1, got {repeat}")
    for name, value in (("rate", rate), ("latency_seconds", latency_seconds)):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"bench: {name} must be a finite number above 0, got {value}")
    for w in workloads:
        if w.size < 1 or w.count < 1 or w.concurrency < 1:
            raise ConfigError(f"bench: workload {w.label()} needs size, count and concurrency of at least 1")


async def run(url: str, workloads: list[Workload], repeat: int, rate: float, latency_seconds: float) -> list[Result]:
    _check(workloads, repeat, rate, latency_seconds)
    results: list[Result] = []
    async with unimq.connect(url) as broker:
        backend = broker.backend
        largest = max(w.size for w in workloads)
        if largest > broker.capabilities.max_message_bytes:
            raise MessageTooLarge(f"bench: size {largest} is over {broker.backend}'s limit of "
                                  f"{broker.capabilities.max_message_bytes} bytes per message")
        for w in workloads:
            produced, consumed = [], []
            for _ in range(repeat):
                destination = f"bench-{uuid.uuid4().hex[:8]}"
                group = "bench" if broker.capabilities_for(destination).fanout else None
                await broker.ensure(destination, groups=(group,) if group else ())
                try:
                    produced.append(await produce(broker, destination, w))
                    consumed.append(await consume(broker, destination, w, group))
                finally:
                    await broker.delete(destination)
            results.append(Result(backend, w.label(), "produce", statistics.median(produced), "msg/s"))
            results.append(Result(backend, w.label(), "consume", statistics.median(consumed), "msg/s"))
        for size in sorted({w.size for w in workloads}):
            destination = f"bench-{uuid.uuid4().hex[:8]}"
            group = "bench" if broker.capabilities_for(destination).fanout else None
            await broker.ensure(destination, groups=(group,) if group else ())
            try:
                p50, p99 = await latency(broker, destination, size, rate, latency_seconds, group)
            finally:
                await broker.delete(destination)
            label = f"{size}B at {rate:g} msg/s"
            results.append(Result(backend, label, "latency p50", p50, "ms"))
            results.append(Result(backend, label, "latency p99", p99, "ms"))
    return results


def workloads(quick: bool, sizes: list[int]) -> list[Workload]:
    count = 2_000 if quick else 20_000
    out = []
    for size in sizes:
        n = max(200, count // 8) if size >= 65536 else count
        for batch in (True, False):
            for concurrency in (1, 8):
                out.append(Workload(size, n if batch else max(200, n // 4), batch, concurrency))
    return out


def table(results: list[Result]) -> str:
    lines = ["| backend | workload | metric | value |", "|---|---|---|---|"]
    lines += [f"| {r.backend} | {r.workload} | {r.metric} | {r.value:,.1f} {r.unit} |" for r in results]
    return "\n".join(lines)


def as_json(results: list[Result]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
