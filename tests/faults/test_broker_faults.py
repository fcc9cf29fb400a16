"""Faults on real brokers: the invariant is that every message whose ``send()`` returned is received.

Per backend whose adapter is installed: connection resets through :class:`FaultProxy` while
producing and while consuming, a broker restart mid-stream (``scripts/brokers restart``), a
consumer process killed with SIGKILL while holding unacked messages, and a slow consumer under a
fast producer. Duplicates are allowed (at-least-once) and printed. Nothing in a test reconnects
by hand: the adapters (and the core's retries) must recover on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import unimq
from unimq.errors import PublishError
from unimq.testing.brokers import select_targets
from unimq.testing.faultproxy import FaultProxy

FAULT_TARGETS = ("rabbitmq", "kafka", "redis", "nats", "sqs", "servicebus")
TARGETS = [t.name for t in select_targets() if t.name in FAULT_TARGETS]
#: Kafka clients reconnect to the advertised address: scripts/brokers gives Kafka a second
#: listener on 29092 that advertises 29093, where the proxy listens.
KAFKA_PROXY_LISTENER, KAFKA_PROXY_PORT = 29092, 29093
#: Per-consumer lock timeouts short enough for a killed consumer's messages to come back soon.
SHORT_LOCK: dict[str, float | None] = {"redis": 2.0, "nats": 2.0, "sqs": 2.0, "rabbitmq": None, "kafka": None}
#: Test servers that keep everything in memory: restarting them wipes every queue (other tests'
#: too), so only the outage through the proxy runs for them.
IN_MEMORY_SERVERS = {
    "sqs": "ElasticMQ as scripts/brokers runs it keeps queues in memory: a restart deletes every queue, "
           "including other tests'. Reconnection is covered by test_broker_unreachable_mid_stream.",
    "servicebus": "the in-repo Service Bus double keeps entities in memory: a restart deletes them, including "
                  "other tests'. Reconnection is covered by test_broker_unreachable_mid_stream.",
}
#: How long a test waits for everything sent to arrive.
SETTLE = {"kafka": 60.0, "servicebus": 45.0}

pytestmark = pytest.mark.parametrize("target", TARGETS)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class Ledger:
    """What was sent (send() returned) and what was received, by body."""

    sent: list[str] = field(default_factory=list)
    failed_sends: int = 0
    received: Counter[str] = field(default_factory=Counter)

    @property
    def missing(self) -> set[str]:
        return set(self.sent) - set(self.received)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.received.values() if n > 1)

    def report(self, what: str) -> str:
        line = (f"{what}: sent ok {len(self.sent)}, send failures {self.failed_sends}, "
                f"received {len(self.received)} distinct, duplicates {self.duplicates}, missing {len(self.missing)}")
        print(line)
        return line


def _dest(kind: str) -> str:
    return f"fault-{kind}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def _proxy(target: str, url: str) -> AsyncIterator[tuple[FaultProxy, str]]:
    """A proxy in front of the target's broker, and the target's URL pointed at it."""
    if target == "kafka":
        proxy = FaultProxy("127.0.0.1", KAFKA_PROXY_LISTENER, port=KAFKA_PROXY_PORT)
        proxied = f"kafka://127.0.0.1:{KAFKA_PROXY_PORT}"
    else:
        proxy = FaultProxy.for_url(url)
    async with proxy:
        yield proxy, (proxied if target == "kafka" else proxy.url(url))


async def _reset(proxy: FaultProxy) -> None:
    """Reset every connection, once the client holds one (it may still be reconnecting)."""
    deadline = time.monotonic() + 15
    while proxy.connections == 0:
        assert time.monotonic() < deadline, "the client holds no connection through the proxy"
        await asyncio.sleep(0.05)
    await proxy.reset_all()


async def _send(producer: unimq.Producer, body: str, ledger: Ledger) -> None:
    try:
        await producer.send(body.encode())
    except PublishError:
        ledger.failed_sends += 1
    else:
        ledger.sent.append(body)


async def _drain(broker: unimq.Broker, dest: str, ledger: Ledger, settle: float, **consumer: Any) -> None:
    """Receive and ack until every sent message has arrived (or ``settle`` seconds pass)."""
    deadline = time.monotonic() + settle
    async with broker.consumer(dest, **consumer) as reader:
        while ledger.missing and time.monotonic() < deadline:
            delivery = await reader.receive(timeout=1.0)
            if delivery is not None:
                ledger.received[delivery.message.body.decode()] += 1
                await delivery.ack()


async def test_connection_reset_mid_produce(target: str, broker_url: Callable[[str], str]) -> None:
    url = broker_url(target)
    dest = _dest("produce")
    ledger = Ledger()
    async with asyncio.timeout(150), unimq.connect(url) as direct:
        await direct.ensure(dest)
        try:
            async with _proxy(target, url) as (proxy, proxied), unimq.connect(proxied) as broker:
                producer = broker.producer(dest)
                gate = asyncio.Semaphore(16)

                async def one(i: int) -> None:
                    async with gate:
                        await _send(producer, f"m{i}", ledger)

                sends = [asyncio.create_task(one(i)) for i in range(300)]
                for threshold in (80, 180):
                    while len(ledger.sent) + ledger.failed_sends < threshold:
                        await asyncio.sleep(0.01)
                    await _reset(proxy)
                await asyncio.gather(*sends)
                for i in range(20):
                    await _send(producer, f"after{i}", ledger)
                assert all(f"after{i}" in ledger.sent for i in range(20)), (
                    "sends after the resets failed: the producer did not reconnect by itself")
                # A send in flight at a reset may fail after its retries; the others must not.
                assert ledger.failed_sends <= 32, ledger.report(f"{target}: too many sends failed")
                assert proxy.accepted > 1, "no new connection after the reset"
            await _drain(direct, dest, ledger, SETTLE.get(target, 30.0))
        finally:
            await direct.delete(dest)
    ledger.report(f"{target} reset mid-produce")
    assert not ledger.missing, f"{len(ledger.missing)} acknowledged sends lost, e.g. {sorted(ledger.missing)[:5]}"


async def test_connection_reset_mid_consume(target: str, broker_url: Callable[[str], str]) -> None:
    url = broker_url(target)
    dest = _dest("consume")
    ledger = Ledger()
    async with asyncio.timeout(150), unimq.connect(url) as direct:
        await direct.ensure(dest)
        try:
            producer = direct.producer(dest)
            for i in range(300):
                await _send(producer, f"m{i}", ledger)
            async with _proxy(target, url) as (proxy, proxied), unimq.connect(proxied) as broker:
                deadline = time.monotonic() + SETTLE.get(target, 30.0) + 30
                resets = [80, 180]
                async with broker.consumer(dest, prefetch=20) as reader:
                    while ledger.missing and time.monotonic() < deadline:
                        if resets and len(ledger.received) >= resets[0]:
                            resets.pop(0)
                            await _reset(proxy)
                        delivery = await reader.receive(timeout=1.0)
                        if delivery is not None:
                            ledger.received[delivery.message.body.decode()] += 1
                            await delivery.ack()
                assert not resets, "fewer messages arrived than needed to inject both resets"
        finally:
            await direct.delete(dest)
    ledger.report(f"{target} reset mid-consume")
    assert not ledger.missing, f"{len(ledger.missing)} acknowledged sends lost, e.g. {sorted(ledger.missing)[:5]}"


async def _stream_through(broker: unimq.Broker, dest: str, ledger: Ledger, fault: Callable[[], Awaitable[None]],
                          settle: float) -> None:
    """Produce and consume at once; after 100 sends run ``fault`` alongside, then send 50 more.

    Sends that fail while the broker is away are counted, not retried by hand; the producer
    and the consumer must come back by themselves.
    """
    producer = broker.producer(dest)
    recovered = asyncio.Event()
    producer_done = asyncio.Event()

    async def inject() -> None:
        await fault()
        recovered.set()

    async def produce() -> None:
        i = after = 0
        injector = None
        deadline = time.monotonic() + 120
        while after < 50:
            assert time.monotonic() < deadline, ledger.report("the producer did not recover")
            before = len(ledger.sent)
            await _send(producer, f"m{i}", ledger)
            i += 1
            if len(ledger.sent) == before:
                await asyncio.sleep(0.2)
            elif recovered.is_set():
                after += 1
            else:
                await asyncio.sleep(0.01)
            if i == 100:
                injector = asyncio.create_task(inject())
        assert injector is not None
        await injector

    async def consume() -> None:
        async with broker.consumer(dest, prefetch=20) as reader:
            while not (producer_done.is_set() and not ledger.missing):
                delivery = await reader.receive(timeout=1.0)
                if delivery is not None:
                    ledger.received[delivery.message.body.decode()] += 1
                    await delivery.ack()

    consumer_task = asyncio.create_task(consume())
    try:
        await produce()
        producer_done.set()
        await asyncio.wait_for(asyncio.shield(consumer_task), settle)
    except TimeoutError:
        pass
    finally:
        consumer_task.cancel()
        await asyncio.gather(consumer_task, return_exceptions=True)


async def test_broker_restart_mid_stream(target: str, broker_url: Callable[[str], str], brokers: Any) -> None:
    if target in IN_MEMORY_SERVERS:
        pytest.skip(IN_MEMORY_SERVERS[target])
    url = broker_url(target)
    dest = _dest("restart")
    ledger = Ledger()
    async with asyncio.timeout(240), unimq.connect(url) as broker:
        await broker.ensure(dest)
        try:
            await _stream_through(broker, dest, ledger, lambda: brokers("restart", _backend(target)),
                                  SETTLE.get(target, 30.0))
        finally:
            await broker.delete(dest)
    ledger.report(f"{target} broker restart")
    assert not ledger.missing, f"{len(ledger.missing)} acknowledged sends lost, e.g. {sorted(ledger.missing)[:5]}"


async def test_broker_unreachable_mid_stream(target: str, broker_url: Callable[[str], str]) -> None:
    """The network path to the broker dies for 5 s (connections reset, new ones refused)."""
    url = broker_url(target)
    dest = _dest("outage")
    ledger = Ledger()
    async with asyncio.timeout(200), unimq.connect(url) as direct:
        await direct.ensure(dest)
        try:
            async with _proxy(target, url) as (proxy, proxied), unimq.connect(proxied) as broker:

                async def outage() -> None:
                    await proxy.refuse()
                    await _reset(proxy)
                    await asyncio.sleep(5)
                    await proxy.accept()

                await _stream_through(broker, dest, ledger, outage, SETTLE.get(target, 30.0))
                assert proxy.accepted > 1, "no new connection after the outage"
        finally:
            await direct.delete(dest)
    ledger.report(f"{target} 5 s outage")
    assert not ledger.missing, f"{len(ledger.missing)} acknowledged sends lost, e.g. {sorted(ledger.missing)[:5]}"


def _backend(target: str) -> str:
    return {t.name: t.backend for t in select_targets()}[target]


CONSUMER_SCRIPT = """
import asyncio, sys, unimq

async def main(url, dest, count, lock):
    count = int(count)
    async with unimq.connect(url) as broker:
        async with broker.consumer(dest, prefetch=count, lock_timeout=float(lock) if lock else None) as reader:
            held = []
            while len(held) < count:
                delivery = await reader.receive(timeout=30)
                if delivery is not None:
                    held.append(delivery)
            print("HOLDING", len(held), flush=True)
            await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:4], sys.argv[4] if len(sys.argv) > 4 else None))
"""


async def test_sigkilled_consumer_messages_come_back(target: str, broker_url: Callable[[str], str]) -> None:
    url = broker_url(target)
    dest = _dest("kill")
    lock = SHORT_LOCK.get(target)
    ledger = Ledger()
    async with asyncio.timeout(150), unimq.connect(url) as broker:
        await broker.ensure(dest, **({"lock_timeout": _seconds(5)} if target == "servicebus" else {}))
        try:
            producer = broker.producer(dest)
            for i in range(20):
                await _send(producer, f"m{i}", ledger)
            args = [sys.executable, "-c", CONSUMER_SCRIPT, url, dest, "20", *([str(lock)] if lock else [])]
            proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), SETTLE.get(target, 30.0) + 30)
                assert line.startswith(b"HOLDING 20"), (line, await proc.stderr.read() if proc.stderr else b"")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
            started = time.monotonic()
            await _drain(broker, dest, ledger, SETTLE.get(target, 30.0) + 30,
                         **({"lock_timeout": lock} if lock else {}))
            print(f"{target}: the killed consumer's messages came back after {time.monotonic() - started:.1f}s")
        finally:
            await broker.delete(dest)
    ledger.report(f"{target} SIGKILL consumer")
    assert not ledger.missing, f"{len(ledger.missing)} messages held by the killed consumer never came back"


def _seconds(n: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=n)


async def test_slow_consumer_fast_producer_is_bounded(target: str, broker_url: Callable[[str], str]) -> None:
    url = broker_url(target)
    dest = _dest("slow")
    prefetch = 10
    body = os.urandom(16 * 1024)
    count = 3000  # 48 MiB in all: a consumer buffering it would show in the traced memory
    async with asyncio.timeout(200), unimq.connect(url) as producer_side, unimq.connect(url) as consumer_side:
        await producer_side.ensure(dest)
        try:
            producer = producer_side.producer(dest)
            async with consumer_side.consumer(dest, prefetch=prefetch) as reader:
                assert await reader.receive(timeout=0.1) is None
                gate = asyncio.Semaphore(32)

                async def one() -> None:
                    async with gate:
                        await producer.send(body)

                rss = _rss_mb()
                tracemalloc.start()
                try:
                    produced = asyncio.gather(*(one() for _ in range(count)))
                    held = []
                    processed = 0
                    while not produced.done() or processed < 200:
                        delivery = await reader.receive(timeout=SETTLE.get(target, 30.0))
                        assert delivery is not None, "the slow consumer starved"
                        held.append(delivery)
                        if len(held) == prefetch:
                            # Backpressure: with prefetch unsettled, nothing more is handed out.
                            assert await reader.receive(timeout=0.2) is None, "more than prefetch unsettled"
                            for d in held:
                                await d.ack()
                            processed += len(held)
                            held.clear()
                        await asyncio.sleep(0.002)  # the slow handler
                    await produced
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                peak_mb = peak / 2**20
                print(f"{target}: slow consumer processed {processed} of {count} while the producer sent them all; "
                      f"peak traced memory {peak_mb:.1f} MiB, RSS {rss:.0f} -> {_rss_mb():.0f} MiB")
                assert peak_mb < 32, f"{peak_mb:.0f} MiB traced: the consumer buffers what it cannot process"
        finally:
            await producer_side.delete(dest)
