"""Request-reply round trip per backend: ``broker.request()`` against a ``broker.consume`` responder.

For each backend: a responder group on a fresh destination (``broker.consume`` on its own
connection, the handler ``delivery.reply()``-ing the body back), then requests from one requester
connection with 1, 16 and 200 in flight (``--inflight``). Per level: round-trip latency p50/p99
(each request timed from before its send to its reply), requests/s, and client CPU per request
(process time, all threads; responder and requester both run in this process, so it is the cost of
both sides). A run stops at ``--count`` requests or ``--seconds``, whichever comes first, after an
untimed warm-up; every run has a fresh destination; repetitions alternate the contenders' order;
latencies are pooled over repetitions, rates and CPU are medians.

The raw baseline, measured in the same run, exists where the backend has request-reply of its own:

- NATS: nats-py core request/reply (``nc.request`` on the connection's inbox, a queue-group
  responder answering with ``msg.respond``). The ``nats`` target is JetStream (request and reply
  stored in streams), so its ratio includes persistence; ``nats-core`` is the like-for-like one.
- RabbitMQ: aio-pika with direct reply-to (``amq.rabbitmq.reply-to``); the request persistent and
  confirmed, into a durable queue, as unimq sends it.

Redis Streams, Kafka, SQS and Service Bus have no request-reply of their own (a raw version would
re-implement the same reply-destination pattern), and memory:// has no client: unimq alone there.

    .venv/bin/python benchmarks/request_bench.py --quick                       # every target that is up
    .venv/bin/python benchmarks/request_bench.py --backends memory,nats-core --json /tmp/rr.json
    .venv/bin/python benchmarks/request_bench.py --url nats://127.0.0.1:34222 --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

import harness
import run_all

import unimq
from unimq.testing.brokers import Target, reachable, select_targets, url_targets
from unimq.url import BrokerURL, parse_url

BACKENDS = ("memory", "rabbitmq", "redis", "nats", "kafka", "sqs", "servicebus")
INFLIGHT = (1, 16, 200)
#: Handlers the responder group runs at once (``--responders``).
RESPONDERS = 32


class Requests(ABC):
    """One way of doing a request-reply round trip: a responder on a destination and a requester."""

    name = ""

    def client(self) -> str:
        return self.name

    @abstractmethod
    async def open(self) -> None:
        """Connect the requester and the responder (separately, as two processes would)."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect both."""

    @abstractmethod
    def responding(self, dest: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Provision ``dest`` and answer every request on it inside the block."""

    @abstractmethod
    async def remove(self, dests: Sequence[str]) -> None:
        """Delete the runs' destinations, after ``close()`` and on a fresh connection: a Kafka producer
        still open re-creates a deleted topic on its next metadata request (auto-create is on)."""

    @abstractmethod
    async def request(self, dest: str, body: bytes, timeout: float) -> bytes:
        """One round trip: the reply's body."""


class UnimqRequests(Requests):
    """``broker.request()`` and a ``broker.consume`` responder replying with ``delivery.reply()``."""

    name = "unimq"

    def __init__(self, url: str, responders: int) -> None:
        self.url = url
        self.responders = responders
        self.requester: unimq.Broker
        self.responder: unimq.Broker

    def client(self) -> str:
        from importlib.metadata import version

        return f"unimq {version('unimq')}"

    async def open(self) -> None:
        self.requester = await unimq.connect(self.url)
        self.responder = await unimq.connect(self.url)

    async def close(self) -> None:
        await harness._quietly(self.responder.close())
        await harness._quietly(self.requester.close())

    async def remove(self, dests: Sequence[str]) -> None:
        async with unimq.connect(self.url) as broker:
            for dest in dests:
                await harness._quietly(broker.delete(dest))

    @contextlib.asynccontextmanager
    async def responding(self, dest: str) -> AsyncIterator[None]:
        await self.responder.ensure(dest)
        stop = asyncio.Event()

        async def answer(delivery: unimq.Delivery) -> None:
            await delivery.reply(delivery.message.body)

        runner = asyncio.create_task(self.responder.consume(
            dest, answer, concurrency=self.responders, prefetch=2 * self.responders, stop=stop,
            handle_signals=False, shutdown_timeout=5))
        try:
            yield
        finally:
            stop.set()
            await harness._quietly(runner)
            runner.cancel()

    async def request(self, dest: str, body: bytes, timeout: float) -> bytes:
        reply: unimq.Message = await self.requester.request(dest, body, timeout=timeout)
        return reply.body


class NatsRequests(Requests):
    """nats-py core request/reply: ``nc.request`` (one inbox subscription per connection), a queue group."""

    name = "raw"

    def __init__(self, url: BrokerURL, responders: int) -> None:
        """A queue-group subscription answers one message at a time; ``responders`` is not needed."""
        import nats

        self._nats = nats
        self.server = f"nats://{url.netloc(with_password=True).split(',')[0]}"
        self.requester: Any = None
        self.responder: Any = None

    def client(self) -> str:
        from importlib.metadata import version

        return f"nats-py {version('nats-py')}"

    async def open(self) -> None:
        self.requester = await self._nats.connect(self.server)
        self.responder = await self._nats.connect(self.server)

    async def close(self) -> None:
        await harness._quietly(self.responder.close())
        await harness._quietly(self.requester.close())

    @contextlib.asynccontextmanager
    async def responding(self, dest: str) -> AsyncIterator[None]:
        async def answer(msg: Any) -> None:
            await msg.respond(msg.data)

        sub = await self.responder.subscribe(dest, queue="responders", cb=answer)
        await self.responder.flush()
        try:
            yield
        finally:
            await harness._quietly(sub.unsubscribe())

    async def remove(self, dests: Sequence[str]) -> None:
        """Core NATS subjects are not created, so there is nothing to delete."""

    async def request(self, dest: str, body: bytes, timeout: float) -> bytes:
        reply = await self.requester.request(dest, body, timeout=timeout)
        data: bytes = reply.data
        return data


class RabbitRequests(Requests):
    """aio-pika with direct reply-to: replies come straight to the requester's channel, no reply queue."""

    name = "raw"
    REPLY_TO = "amq.rabbitmq.reply-to"

    def __init__(self, url: BrokerURL, responders: int) -> None:
        import aio_pika

        self._pika = aio_pika
        self.responders = responders
        user = quote(url.username or "guest", safe="") + ":" + quote(url.password or "guest", safe="")
        self.amqp = f"amqp://{user}@{url.host}:{url.port or 5672}{url.path or '/'}"
        self.arguments = {"x-queue-type": url.query["queue_type"]} if "queue_type" in url.query else {}
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._connections: list[Any] = []
        self.requests: Any = None
        self.responses: Any = None

    def client(self) -> str:
        from importlib.metadata import version

        return f"aio-pika {version('aio-pika')}"

    async def open(self) -> None:
        requester, responder = await self._pika.connect(self.amqp), await self._pika.connect(self.amqp)
        self._connections = [requester, responder]
        self.requests = await requester.channel(publisher_confirms=True)
        replies = await self.requests.get_queue(self.REPLY_TO, ensure=False)
        await replies.consume(self._on_reply, no_ack=True)
        self.responses = await responder.channel(publisher_confirms=True)
        await self.responses.set_qos(prefetch_count=2 * self.responders)

    async def close(self) -> None:
        for connection in reversed(self._connections):
            await harness._quietly(connection.close())

    async def remove(self, dests: Sequence[str]) -> None:
        connection = await self._pika.connect(self.amqp)
        try:
            channel = await connection.channel()
            for dest in dests:
                await harness._quietly(channel.queue_delete(dest))
        finally:
            await connection.close()

    async def _on_reply(self, msg: Any) -> None:
        waiting = self._pending.pop(msg.correlation_id or "", None)
        if waiting is not None and not waiting.done():
            waiting.set_result(msg.body)

    @contextlib.asynccontextmanager
    async def responding(self, dest: str) -> AsyncIterator[None]:
        queue = await self.responses.declare_queue(dest, durable=True, arguments=self.arguments)

        async def answer(msg: Any) -> None:
            await self.responses.default_exchange.publish(
                self._pika.Message(msg.body, correlation_id=msg.correlation_id), routing_key=msg.reply_to)
            await msg.ack()

        tag = await queue.consume(answer)
        try:
            yield
        finally:
            await harness._quietly(queue.cancel(tag))

    async def request(self, dest: str, body: bytes, timeout: float) -> bytes:
        correlation = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = future
        try:
            await self.requests.default_exchange.publish(
                self._pika.Message(body, correlation_id=correlation, reply_to=self.REPLY_TO,
                                   delivery_mode=self._pika.DeliveryMode.PERSISTENT), routing_key=dest)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._pending.pop(correlation, None)


def contenders(url: str, only: Sequence[str], responders: int) -> list[Requests]:
    """unimq, and the raw client where the backend has request-reply of its own and the client is installed."""
    parsed = parse_url(url)
    raw: Callable[[BrokerURL, int], Requests] | None = {
        "nats": NatsRequests, "amqp": RabbitRequests, "rabbitmq": RabbitRequests}.get(parsed.scheme)
    out: list[Requests] = []
    if raw is not None and (not only or "raw" in only):
        try:
            out.append(raw(parsed, responders))
        except ModuleNotFoundError as exc:
            harness._log(f"no raw baseline: {exc}")
    if not only or "unimq" in only:
        out.append(UnimqRequests(url, responders))
    return out


async def warm_up(c: Requests, dest: str, body: bytes, requests: int) -> None:
    """Until one request is answered, then ``requests`` more, untimed. The first attempts wait briefly
    (core NATS drops a request sent before the responder subscribes), later ones longer (a Kafka
    group join takes seconds)."""
    deadline, wait = time.monotonic() + 60, 0.5
    while True:
        try:
            await c.request(dest, body, timeout=wait)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            wait = min(wait * 2, 10.0)
            await asyncio.sleep(0.05)
    for _ in range(requests):
        await c.request(dest, body, timeout=20)


async def run_requests(c: Requests, dest: str, size: int, inflight: int, count: int, seconds: float,
                       timeout: float) -> tuple[list[float], float, float, int]:
    """One run on a fresh destination: (latencies ms, requests/s, CPU µs per request, requests failed)."""
    body = os.urandom(size // 2 + 1).hex().encode()[:size]
    samples: list[float] = []
    failed = 0
    async with c.responding(dest):
        await warm_up(c, dest, body, 20)
        issued = 0
        deadline = time.perf_counter() + seconds

        async def requester() -> None:
            nonlocal issued, failed
            while issued < count and time.perf_counter() < deadline:
                issued += 1
                sent = time.perf_counter_ns()
                try:
                    await c.request(dest, body, timeout)
                except Exception:
                    failed += 1
                    continue
                samples.append((time.perf_counter_ns() - sent) / 1e6)

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(requester() for _ in range(inflight)))
        elapsed = time.perf_counter() - started
        cpu_us = (time.process_time() - cpu) * 1e6 / max(1, len(samples))
    return samples, len(samples) / max(elapsed, 1e-9), cpu_us, failed


async def run_target(target: Target, url: str, size: int, levels: Sequence[int], repeat: int, count: int,
                     seconds: float, timeout: float, only: Sequence[str], responders: int) -> list[harness.Figure]:
    opened: list[Requests] = []
    figures: list[harness.Figure] = []
    made: dict[str, list[str]] = {}
    for c in contenders(url, only, responders):
        try:
            await asyncio.wait_for(c.open(), 60)
            opened.append(c)
        except Exception as exc:
            harness._log(f"{target.name}: {c.name} unavailable: {type(exc).__name__}: {exc}")
            figures.append(harness.Figure(target.name, c.name, c.name, "open", "", 0, False, 0, 0,
                                          error=f"{type(exc).__name__}: {exc}"[:300]))
    try:
        for inflight in levels:
            label = f"{size}B inflight={inflight}"
            figs = {c.name: harness.Figure(target.name, c.name, c.client(), "request", label, size, False, inflight, 0)
                    for c in opened}
            pooled: dict[str, list[float]] = {c.name: [] for c in opened}
            failed: dict[str, int] = dict.fromkeys(figs, 0)
            for rep in range(repeat):
                for c in harness._order(opened, rep):
                    fig = figs[c.name]
                    if fig.failures >= 2:
                        continue
                    dest = harness.new_dest(target.name)
                    made.setdefault(c.name, []).append(dest)
                    try:
                        samples, rate, cpu, lost = await asyncio.wait_for(
                            run_requests(c, dest, size, inflight, count, seconds, timeout), seconds + timeout + 120)
                    except Exception as exc:
                        fig.failures += 1
                        fig.error = f"{type(exc).__name__}: {exc}"[:300]
                        harness._log(f"{target.name} {label} {c.name}: FAILED {fig.error}")
                        continue
                    failed[c.name] += lost
                    if failed[c.name]:
                        fig.error = f"{failed[c.name]} request(s) failed or timed out"
                    pooled[c.name] += samples
                    fig.rates.append(rate)
                    fig.cpu_us.append(cpu)
            for name, samples in pooled.items():
                fig = figs[name]
                fig.count = len(samples)
                cuts = harness.percentiles(samples)
                if cuts:
                    fig.p50_ms, fig.p99_ms = cuts
            harness._finish(figs, f"{target.name} request {label:20}")
            figures.extend(figs.values())
    finally:
        for c in opened:
            await harness._quietly(c.close())
            await harness._quietly(c.remove(made.get(c.name, [])))
    return figures


def chosen(args: argparse.Namespace) -> list[tuple[Target, str]]:
    """(target, URL) for each explicit ``--url``, else each ``--backends`` target whose broker answers."""
    if args.url:
        return [(t, t.url) for t in url_targets(args.url)]
    out = []
    for target in select_targets([n for n in args.backends.split(",") if n]):
        url = os.environ.get(target.env_var) or target.url
        if target.scheme == "memory" or reachable(url):
            out.append((target, url))
        else:
            harness._log(f"{target.name}: skipped, nothing answers at {parse_url(url).redacted()} "
                         f"(scripts/brokers up {target.backend}, or set {target.env_var})")
    return out


def summary(figures: Sequence[harness.Figure], levels: Sequence[int]) -> str:
    """One row per backend and client, as docs/patterns.md shows it; the ratios are to the raw client's
    figure from the same run (p50 ÷ raw above 1 is slower, req/s ÷ raw below 1 is fewer)."""
    low, top = min(levels), max(levels)
    head = ["backend", "client", *(f"p50 / p99 ms, {n} in flight" for n in levels), f"req/s, {top} in flight",
            f"CPU µs/req, {top} in flight", f"p50 ÷ raw, {low} in flight", f"req/s ÷ raw, {top} in flight"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    rows: dict[tuple[str, str], dict[int, harness.Figure]] = {}
    for fig in figures:
        if fig.op == "request":
            rows.setdefault((fig.backend, fig.contender), {})[fig.concurrency] = fig
    for (backend, contender), by_level in rows.items():
        cells = [backend, next(iter(by_level.values())).client]
        for n in levels:
            f = by_level.get(n)
            cells.append(f"{f.p50_ms:.2f} / {f.p99_ms:.2f}" if f and f.p50_ms is not None and f.p99_ms is not None
                         else "error" if f and f.error else "")
        t, first = by_level.get(top), by_level.get(low)
        raw = rows.get((backend, "raw"), {}).get(low)
        latency_ratio = (f"{first.p50_ms / raw.p50_ms:.2f}" if contender != "raw" and first and raw
                         and first.p50_ms and raw.p50_ms else "")
        cells += [f"{t.rate:,.0f}" if t and t.rate else "", f"{t.cpu_us_per_msg:.0f}" if t and t.cpu_us_per_msg else "",
                  latency_ratio, f"{t.ratio:.2f}" if t and t.ratio and contender != "raw" else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    levels = [int(n) for n in args.inflight.split(",")]
    repeat = args.repeat or (3 if args.quick else 5)
    count = args.count or (1_000 if args.quick else 5_000)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    only = [c for c in args.contenders.split(",") if c]
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": run_all.machine(),
        "settings": {"size": args.size, "inflight": levels, "repeat": repeat, "count": count, "seconds": seconds,
                     "responders": args.responders},
        "urls": {}, "figures": []}
    for target, url in chosen(args):
        results["urls"][target.name] = parse_url(url).redacted()
        started = time.monotonic()
        figures = await run_target(target, url, args.size, levels, repeat, count, seconds, args.timeout, only,
                                   args.responders)
        harness._log(f"== {target.name}: {time.monotonic() - started:.0f} s, load {run_all.load()}")
        results["figures"] += [asdict(f) for f in figures]
    results["machine"]["load_at_end"] = run_all.load()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="conformance target names (rabbitmq-quorum, nats-core, ... too); skipped when down")
    parser.add_argument("--url", action="append", help="an explicit broker URL (repeatable); overrides --backends")
    parser.add_argument("--quick", action="store_true", help="3 repetitions of at most 1,000 requests or 3 s")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per figure (default 5, quick 3)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--inflight", default=",".join(map(str, INFLIGHT)), help="requests in flight, per run")
    parser.add_argument("--count", type=int, default=None, help="most requests per run (default 5,000, quick 1,000)")
    parser.add_argument("--seconds", type=float, default=None, help="longest run (default 10, quick 3)")
    parser.add_argument("--size", type=int, default=100, help="request and reply body in bytes")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request")
    parser.add_argument("--responders", type=int, default=RESPONDERS,
                        help="handlers the responder group runs at once (unimq, aio-pika)")
    parser.add_argument("--contenders", default="", help="raw,unimq (default: both where raw exists)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(run(args))
    figures = [harness.Figure(**f) for f in results["figures"]]
    print(harness.table(figures, unit="req"))
    print()
    print(summary(figures, results["settings"]["inflight"]))
    for f in figures:
        if f.error:
            harness._log(f"{f.backend} {f.workload} {f.contender}: {f.error}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
