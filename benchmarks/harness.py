"""The shared benchmark harness: one method for every backend, so every figure is comparable.

A backend file (``benchmarks/<backend>_bench.py``) only defines its *contenders* — the raw client
at its best practice (pipelining, batching), unimq, and the peer libraries — each as a
:class:`Contender` with the same few workloads. This module does the rest, identically for all:

- **produce**: ``count`` messages of ``size`` bytes split over ``concurrency`` tasks, batched (the
  client's native batching/pipelining) or one awaited send at a time;
- **consume**: the same number of messages, pre-filled untimed, read and acked by ``concurrency``
  competing consumers (batching on: the client's batch receive/ack shape; off: one ack at a time);
- **latency**: end-to-end send → receive at a fixed offered rate, p50 and p99, the send timestamp
  carried in the first bytes of the body (so no client needs headers);
- every run on a fresh destination; repetitions **interleaved** (the contenders' order alternates
  every repetition), the **median** of at least five, wall-clock rate *and* client CPU per message
  (process time, all threads: steadier than wall time on a loaded machine), each as a ratio to raw.

Common CLI (every backend file): ``--quick --repeat N --json PATH --url URL --sizes 100,1024,65536
--batch on|off|both --concurrency 1,8 --ops produce,consume,latency --contenders raw,unimq,...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import unimq
from unimq.url import parse_url

T = TypeVar("T")
SIZES = (100, 1024, 65536)
OPS = ("produce", "consume", "latency")
#: Body prefix for latency probes, ASCII (SQS bodies are text): a flag ("1" measured, "0" warm-up)
#: and the send time in ns, 20 digits.
_PROBE = 21


@dataclass(frozen=True)
class Workload:
    size: int
    count: int
    batch: bool
    concurrency: int

    def label(self) -> str:
        return f"{self.size}B batch={'on' if self.batch else 'off'} c={self.concurrency}"


class Quota:
    """The messages a set of competing consumers still has to read; thread-safe (sync clients)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.remaining = total
        self.first = 0.0
        self.done = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        return self.remaining <= 0

    def arrived(self) -> None:
        """The first messages arrived (call before settling them, so settling is inside the timing)."""
        with self._lock:
            if not self.first:
                self.first = time.perf_counter()

    def take(self, n: int = 1) -> None:
        with self._lock:
            if not self.first:
                self.first = time.perf_counter()
            self.remaining -= n
            if self.remaining > 0:
                return
        if threading.current_thread() is threading.main_thread():
            self.done.set()
        else:
            self._loop.call_soon_threadsafe(self.done.set)


class Contender(ABC):
    """One way of talking to the broker. Subclasses implement the workloads; the harness times them."""

    #: "raw", "unimq", or the peer library's name.
    name: str = ""
    #: Which contender fills the destinations this one consumes (None: itself, with batching on).
    fill_by: str | None = None
    #: The largest body this contender can send (None: no limit below the harness's sizes).
    max_size: int | None = None
    #: The workloads it takes part in (a calibration row may run only one).
    ops: tuple[str, ...] = ("produce", "consume", "latency")

    def client(self) -> str:
        """The library and version, for the report."""
        return self.name

    @abstractmethod
    async def open(self) -> None:
        """Connect once, before any run (not timed)."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect after all runs."""

    @abstractmethod
    async def create(self, dest: str, w: Workload) -> None:
        """Provision a fresh destination for one run (not timed)."""

    @abstractmethod
    async def delete(self, dest: str) -> None:
        """Remove it after the run."""

    @abstractmethod
    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        """Send ``payloads`` (one of ``concurrency`` concurrent tasks' share), awaiting acceptance."""

    @abstractmethod
    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        """One of ``concurrency`` competing consumers: read and ack until ``quota`` is finished."""

    @abstractmethod
    async def send_one(self, dest: str, body: bytes) -> None:
        """Send one message and await its acceptance (the latency workload's producer)."""

    @abstractmethod
    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        """Receive and ack forever, calling ``on_body`` for each body (cancelled when done)."""


class UnimqContender(Contender):
    """unimq through its public API: ``send_many`` (core chunking + pipelining) or one ``send``; a consumer."""

    name = "unimq"

    def __init__(self, url: str, *, prefetch: int = 500, group: str | Callable[[str], str] | None = None,
                 receive_batch: int = 0,
                 ensure: Callable[[Workload], dict[str, Any]] | None = None, start: str | None = None,
                 fill_by: str | None = None) -> None:
        self.url = url
        self.prefetch = prefetch
        self.group = group
        self.receive_batch = receive_batch
        self.ensure = ensure or (lambda w: {})
        self.start: Any = start
        self.fill_by = fill_by
        self.broker: unimq.Broker

    def client(self) -> str:
        from importlib.metadata import version

        return f"unimq {version('unimq')}"

    async def open(self) -> None:
        self.broker = await unimq.connect(self.url)

    async def close(self) -> None:
        await self.broker.close()

    def group_of(self, dest: str) -> str | None:
        """The consumer group; a callable gives one per destination (Kafka groups are cluster-wide)."""
        return self.group(dest) if callable(self.group) else self.group

    async def create(self, dest: str, w: Workload) -> None:
        group = self.group_of(dest)
        groups = (group,) if group else ()
        await self.broker.ensure(dest, groups=groups, **self.ensure(w))

    async def delete(self, dest: str) -> None:
        await self.broker.delete(dest)

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        producer = self.broker.producer(dest)
        if batch:
            await producer.send_many(payloads)
        else:
            for body in payloads:
                await producer.send(body)

    def _consumer(self, dest: str) -> unimq.Consumer:
        return self.broker.consumer(dest, self.group_of(dest), prefetch=self.prefetch, start=self.start)

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        async with self._consumer(dest) as consumer:
            if batch and self.receive_batch:
                while not quota.finished:
                    got = await consumer.receive_batch(min(self.receive_batch, quota.remaining), timeout=1.0)
                    if got:
                        quota.arrived()
                        await consumer.ack_many(got)
                        quota.take(len(got))
                return
            while not quota.finished:
                delivery = await consumer.receive(timeout=1.0)
                if delivery is not None:
                    await delivery.ack()
                    quota.take()

    async def send_one(self, dest: str, body: bytes) -> None:
        await self.broker.producer(dest).send(body)

    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        async with self._consumer(dest) as consumer:
            async for delivery in consumer:
                on_body(delivery.message.body)
                await delivery.ack()


@dataclass
class Figure:
    backend: str
    contender: str
    client: str
    op: str
    workload: str
    size: int
    batch: bool
    concurrency: int
    count: int
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None
    rate: float | None = None
    cpu_us_per_msg: float | None = None
    ratio: float | None = None
    cpu_ratio: float | None = None
    error: str | None = None
    failures: int = 0

    def summarise(self) -> None:
        if self.rates:
            self.rate = statistics.median(self.rates)
            self.cpu_us_per_msg = statistics.median(self.cpu_us)


@dataclass
class Profile:
    """How much to run: message counts for 1 KiB with batching on; others are derived."""

    quick: bool
    repeat: int
    count: int
    latency_rate: float
    latency_seconds: float
    latency_windows: int


@dataclass
class Backend:
    """What a backend file declares: its name, default URL and contenders."""

    name: str
    default_url: str
    contenders: Callable[[str], list[Contender]]
    quick_count: int = 5_000
    full_count: int = 20_000
    latency_rate: float = 500.0
    #: Measure consume from the first message received (Kafka: group join is not throughput).
    consume_from_first: bool = False
    #: Longest a single run may take before it counts as failed.
    run_timeout: float = 60.0
    notes: list[str] = field(default_factory=list)

    def profile(self, quick: bool, repeat: int | None) -> Profile:
        return Profile(
            quick=quick,
            repeat=max(5, repeat or (5 if quick else 7)),
            count=self.quick_count if quick else self.full_count,
            latency_rate=self.latency_rate,
            latency_seconds=0.4 if quick else 2.0,
            latency_windows=5,
        )

    def workloads(self, profile: Profile, sizes: Sequence[int], batches: Sequence[bool],
                  concurrencies: Sequence[int]) -> list[Workload]:
        out = []
        for size in sizes:
            n = profile.count
            if size >= 65536:
                n = max(100, n // 10)
            for batch in batches:
                for concurrency in concurrencies:
                    m = n if batch else max(100, n // 5)
                    out.append(Workload(size, m - m % concurrency, batch, concurrency))
        return out


def payloads(size: int, count: int) -> list[bytes]:
    """Random but ASCII bodies: SQS carries text only, and FastStream's Redis batch parser JSON-dumps
    bodies, so random binary would fail there (a FastStream limitation noted in the report)."""
    body = os.urandom(size // 2 + 1).hex().encode()[:size]
    return [body] * count


def _split(items: list[bytes], parts: int) -> list[list[bytes]]:
    step = math.ceil(len(items) / parts)
    return [items[i:i + step] for i in range(0, len(items), step)]


def _order(contenders: Sequence[T], rep: int) -> list[T]:
    """Alternate the order every repetition so drift (load, broker state) hits everyone alike."""
    return list(contenders) if rep % 2 == 0 else list(reversed(contenders))


def percentiles(samples: Sequence[float]) -> tuple[float, float] | None:
    """(p50, p99) of latency samples in ms, rounded to µs; None below two samples."""
    if len(samples) < 2:
        return None
    cuts = statistics.quantiles(samples, n=100)
    return round(cuts[49], 3), round(cuts[98], 3)


def new_dest(backend: str) -> str:
    return f"bench-{backend}-{uuid.uuid4().hex[:10]}"


async def _timed(run: Callable[[], Any], count: int, timeout: float,
                 started_at: Callable[[], float] | None = None) -> tuple[float, float]:
    """(messages per second, client CPU µs per message) for one run."""
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.wait_for(run(), timeout)
    elapsed = time.perf_counter() - (started_at() if started_at and started_at() else started)
    return count / max(elapsed, 1e-9), (time.process_time() - cpu) * 1e6 / count


async def run_produce(c: Contender, backend: Backend, w: Workload) -> tuple[float, float]:
    dest = new_dest(backend.name)
    await c.create(dest, w)
    try:
        shares = _split(payloads(w.size, w.count), w.concurrency)

        async def go() -> None:
            await asyncio.gather(*(c.produce(dest, share, w.batch) for share in shares))

        return await _timed(go, w.count, backend.run_timeout)
    finally:
        await _quietly(c.delete(dest))


async def run_consume(c: Contender, filler: Contender, backend: Backend, w: Workload) -> tuple[float, float]:
    dest = new_dest(backend.name)
    await filler.create(dest, w)
    try:
        for share in _split(payloads(w.size, w.count), 8):
            await filler.produce(dest, share, True)
        quota = Quota(w.count)
        tasks: list[asyncio.Task[None]] = []

        async def go() -> None:
            tasks.extend(asyncio.create_task(c.consume(dest, quota, w.batch)) for _ in range(w.concurrency))
            waiter = asyncio.create_task(quota.done.wait())
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if not quota.finished:
                waiter.cancel()
                for task in tasks:
                    if task.done() and task.exception():
                        raise task.exception()  # type: ignore[misc]
                await waiter

        try:
            return await _timed(go, w.count, backend.run_timeout,
                                (lambda: quota.first) if backend.consume_from_first else None)
        finally:
            for task in tasks:
                task.cancel()
            await _quietly(asyncio.gather(*tasks, return_exceptions=True))
    finally:
        await _quietly(filler.delete(dest))


async def run_latency(c: Contender, backend: Backend, size: int, rate: float, seconds: float) -> list[float]:
    """End-to-end latencies (ms) of ``rate × seconds`` messages sent at ``rate`` per second."""
    dest = new_dest(backend.name)
    await c.create(dest, Workload(size, 0, False, 1))
    samples: list[float] = []
    warm = asyncio.Event()
    total = max(2, int(rate * seconds))

    def on_body(body: bytes) -> None:
        if body[:1] == b"1":
            samples.append((time.perf_counter_ns() - int(body[1:_PROBE])) / 1e6)
        else:
            warm.set()

    def probe(flag: bytes) -> bytes:
        return flag + b"%020d" % time.perf_counter_ns() + b"x" * max(0, size - _PROBE)

    receiver = asyncio.create_task(c.receive_all(dest, on_body))
    try:
        deadline = time.monotonic() + 30  # consumers that join a group (Kafka) need a while
        while not warm.is_set():
            if time.monotonic() > deadline or receiver.done():
                if receiver.done() and receiver.exception():
                    raise receiver.exception()  # type: ignore[misc]
                raise TimeoutError("latency receiver never saw a warm-up message")
            await c.send_one(dest, probe(b"0"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(warm.wait(), 0.2)
        started = time.perf_counter()
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            await c.send_one(dest, probe(b"1"))
        end = time.monotonic() + 10
        while len(samples) < total and time.monotonic() < end:
            await asyncio.sleep(0.01)
    finally:
        receiver.cancel()
        await _quietly(asyncio.gather(receiver, return_exceptions=True))
        await _quietly(c.delete(dest))
    return samples


async def _quietly(aw: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(aw, 30)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def run_backend(backend: Backend, url: str, profile: Profile, sizes: Sequence[int], batches: Sequence[bool],
                      concurrencies: Sequence[int], ops: Sequence[str], only: Sequence[str] | None = None
                      ) -> list[Figure]:
    """Run the matrix for one backend; return one Figure per (contender, op, workload)."""
    # Sync clients (boto3, Kombu) run in threads: 8 pollers x 8 consumers must not queue behind
    # asyncio's default of cpu+4 workers.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=160))
    contenders = [c for c in backend.contenders(url) if not only or c.name in only]
    opened: list[Contender] = []
    figures: list[Figure] = []
    try:
        for c in contenders:
            try:
                await asyncio.wait_for(c.open(), 60)
                opened.append(c)
            except Exception as exc:
                _log(f"{backend.name}: {c.name} unavailable: {type(exc).__name__}: {exc}")
                figures.append(Figure(backend.name, c.name, c.name, "open", "", 0, False, 0, 0,
                                      error=f"{type(exc).__name__}: {exc}"))
        by_name = {c.name: c for c in opened}
        for w in backend.workloads(profile, sizes, batches, concurrencies):
            for op in (o for o in ops if o in ("produce", "consume")):
                figs = {c.name: Figure(backend.name, c.name, c.client(), op, w.label(), w.size, w.batch,
                                       w.concurrency, w.count) for c in opened if op in c.ops}
                for rep in range(profile.repeat):
                    for c in _order(opened, rep):
                        fig = figs.get(c.name)
                        if fig is None:
                            continue
                        if fig.failures >= 2 or (c.max_size and w.size > c.max_size):
                            fig.error = fig.error or f"body of {w.size} B exceeds {c.name}'s limit"
                            continue
                        try:
                            if op == "produce":
                                rate, cpu = await run_produce(c, backend, w)
                            else:
                                filler = by_name.get(c.fill_by or c.name, c)
                                rate, cpu = await run_consume(c, filler, backend, w)
                        except Exception as exc:
                            fig.failures += 1
                            fig.error = f"{type(exc).__name__}: {exc}"[:300]
                            _log(f"{backend.name} {op} {w.label()} {c.name}: FAILED {fig.error}")
                            continue
                        fig.rates.append(rate)
                        fig.cpu_us.append(cpu)
                _finish(figs, f"{backend.name} {op:8} {w.label():24}")
                figures.extend(figs.values())
        if "latency" in ops:
            timed = [c for c in opened if "latency" in c.ops]
            for size in sizes:
                figs = {c.name: Figure(backend.name, c.name, c.client(), "latency",
                                       f"{size}B at {profile.latency_rate:g}/s", size, False, 1, 0) for c in timed}
                pooled: dict[str, list[float]] = {c.name: [] for c in timed}
                for rep in range(profile.latency_windows):
                    for c in _order(timed, rep):
                        fig = figs[c.name]
                        if fig.error or (c.max_size and size > c.max_size):
                            fig.error = fig.error or f"body of {size} B exceeds {c.name}'s limit"
                            continue
                        try:
                            pooled[c.name] += await asyncio.wait_for(
                                run_latency(c, backend, size, profile.latency_rate, profile.latency_seconds),
                                profile.latency_seconds + backend.run_timeout)
                        except Exception as exc:
                            fig.error = f"{type(exc).__name__}: {exc}"[:300]
                            _log(f"{backend.name} latency {size}B {c.name}: FAILED {fig.error}")
                for name, samples in pooled.items():
                    fig = figs[name]
                    fig.count = len(samples)
                    cuts = percentiles(samples)
                    if cuts:
                        fig.p50_ms, fig.p99_ms = cuts
                        fig.error = None if fig.count else fig.error
                _log(f"{backend.name} latency  {size}B: " + ", ".join(
                    f"{f.contender} p50 {f.p50_ms} p99 {f.p99_ms} ms" for f in figs.values()))
                figures.extend(figs.values())
    finally:
        for c in opened:
            await _quietly(c.close())
    return figures


def _finish(figs: dict[str, Figure], label: str) -> None:
    for fig in figs.values():
        fig.summarise()
    raw = figs.get("raw")
    for fig in figs.values():
        if raw and raw.rate and fig.rate:
            fig.ratio = round(fig.rate / raw.rate, 3)
        if raw and raw.cpu_us_per_msg and fig.cpu_us_per_msg:
            fig.cpu_ratio = round(raw.cpu_us_per_msg / fig.cpu_us_per_msg, 3)
    _log(f"{label}: " + ", ".join(
        f"{f.contender} {f.rate or 0:,.0f}/s {f.cpu_us_per_msg or 0:.0f}µs ×{f.ratio}" if not f.error or f.rate
        else f"{f.contender} FAILED" for f in figs.values()))


def add_arguments(parser: argparse.ArgumentParser, default_url: str) -> None:
    parser.add_argument("--url", default=default_url)
    parser.add_argument("--quick", action="store_true", help="small counts: the whole matrix in minutes")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per figure (at least 5)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="body sizes in bytes")
    parser.add_argument("--batch", choices=("on", "off", "both"), default="both")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated producer/consumer counts")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--contenders", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--count", type=int, default=None, help="messages for 1 KiB batching on (overrides profile)")


def selection(args: argparse.Namespace) -> tuple[list[int], list[bool], list[int], list[str], list[str]]:
    batches = {"on": [True], "off": [False], "both": [True, False]}[args.batch]
    return ([int(s) for s in args.sizes.split(",")], batches, [int(c) for c in args.concurrency.split(",")],
            args.ops.split(","), [c for c in args.contenders.split(",") if c])


def table(figures: Sequence[Figure], unit: str = "msg") -> str:
    """The figures as a Markdown table; ``unit`` names what is counted (``req`` for request-reply)."""
    lines = [f"| backend | op | workload | contender | {unit}/s | CPU µs/{unit} | × raw (rate) | × raw (CPU) | "
             "p50 / p99 ms |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for f in figures:
        if f.op == "open":
            continue
        lat = f"{f.p50_ms} / {f.p99_ms}" if f.p50_ms is not None else ""
        rate = f"{f.rate:,.0f}" if f.rate else ("error" if f.error else "")
        cpu = f"{f.cpu_us_per_msg:.1f}" if f.cpu_us_per_msg else ""
        lines.append(f"| {f.backend} | {f.op} | {f.workload} | {f.contender} | {rate} | {cpu} | "
                     f"{f.ratio or ''} | {f.cpu_ratio or ''} | {lat} |")
    return "\n".join(lines)


def main(backend: Backend) -> None:
    """The common CLI every ``benchmarks/<backend>_bench.py`` exposes."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, os.environ.get(f"UNIMQ_TEST_{backend.name.upper()}_URL", backend.default_url))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sizes, batches, concurrencies, ops, only = selection(args)
    profile = backend.profile(args.quick, args.repeat)
    if args.count:
        profile.count = args.count
    figures = asyncio.run(run_backend(backend, args.url, profile, sizes, batches, concurrencies, ops, only))
    print(table(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": backend.name, "url": parse_url(args.url).redacted(),
                       "profile": asdict(profile), "notes": backend.notes,
                       "figures": [asdict(x) for x in figures]}, f, indent=2)


class UnimqLoop(UnimqContender):
    """The idiomatic per-message path, batching on or off: ``async for delivery in consumer: await
    delivery.ack()``, as the README shows. The last message counts once the consumer closed, i.e.
    once every queued ack was sent, so the background ack batching is inside the timing."""

    name = "unimq-loop"

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        async with self._consumer(dest) as consumer:
            async for delivery in consumer:
                await delivery.ack()
                if quota.remaining <= 1:
                    break
                quota.take()
        quota.take()


def peer(make: Callable[[], Contender]) -> list[Contender]:
    """A peer library's contender, or none when it is not installed (``pip install -e '.[bench]'``)."""
    try:
        return [make()]
    except ImportError as exc:
        print(f"skipping a peer contender: {exc}", file=sys.stderr)
        return []
