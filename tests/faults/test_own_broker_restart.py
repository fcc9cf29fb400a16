"""Broker restart mid-stream for SQS (ElasticMQ) and Service Bus (the in-repo double).

Other engineers' tests use the shared ElasticMQ and double at the same time, so each test here
starts a broker of its own on a free port, with its own data dir under the test's tmp_path,
through the classes of scripts/brokers (``ElasticMQ(port=, home=, persistent=True)``: H2 message
storage; ``ServiceBusDouble(port=, home=)``: the double's ``--data-dir`` snapshot), and restarts
it the way ``scripts/brokers restart`` does (``down(wipe=False)``: SIGTERM and wait, then ``up``).

Invariant, as in test_broker_faults.py: every message whose ``send()`` returned is received at
least once; duplicates and failed sends are counted and printed; the producer and the consumer
recover by themselves (nothing reconnects by hand). An ack that fails while the broker is away
is counted, not retried: the message comes back after its lock (at-least-once), so acks are not
retried by the core either.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_broker_faults import Ledger, _dest, _send

import unimq
from unimq.errors import UnimqError
from unimq.testing.brokers import select_targets

ROOT = Path(__file__).resolve().parents[2]
#: Target -> the default port in its test URL, replaced by the private instance's port.
DEFAULT_PORTS = {"sqs": 9324, "servicebus": 5673}
TARGETS = [t for t in select_targets() if t.name in DEFAULT_PORTS]
#: Short locks, so that messages a consumer held across the restart come back soon
#: (SQS visibility timeout; Service Bus lock duration, 5 s at least).
LOCK = timedelta(seconds=5)
SETTLE = 45.0


def _scripts_brokers() -> ModuleType:
    """scripts/brokers.py, a script rather than a package, loaded by path."""
    name = "unimq_scripts_brokers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "brokers.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def own_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """``(instance, url)``: a private, persistent broker for the test's target, stopped afterwards."""
    brokers = _scripts_brokers()
    target = request.getfixturevalue("target")
    port = _free_port()
    if target.backend == "sqs":
        instance = brokers.ElasticMQ(port=port, home=tmp_path / "sqs", persistent=True)
    else:
        instance = brokers.ServiceBusDouble(port=port, home=tmp_path / "servicebus")
    assert brokers.up([instance]), f"{target.name}: the private broker did not start:\n{instance.log_since_start()}"
    try:
        yield instance, target.url.replace(f":{DEFAULT_PORTS[target.name]}", f":{port}")
    finally:
        brokers.down([instance])


async def _stream_through_restart(broker: unimq.Broker, dest: str, ledger: Ledger,
                                  restart: Callable[[], Awaitable[None]]) -> int:
    """Produce and consume at once; after 100 sends restart the broker alongside, then send 50
    more. Returns the number of acks that failed (retryable errors while the broker was away)."""
    producer = broker.producer(dest)
    restarted = asyncio.Event()
    producer_done = asyncio.Event()
    failed_acks = 0

    async def inject() -> None:
        await restart()
        restarted.set()

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
            elif restarted.is_set():
                after += 1
            else:
                await asyncio.sleep(0.01)
            if i == 100:
                injector = asyncio.create_task(inject())
        assert injector is not None
        await injector
        producer_done.set()

    async def consume() -> None:
        nonlocal failed_acks
        async with broker.consumer(dest, prefetch=20) as reader:
            while not (producer_done.is_set() and not ledger.missing):
                delivery = await reader.receive(timeout=1.0)
                if delivery is None:
                    continue
                ledger.received[delivery.message.body.decode()] += 1
                try:
                    await delivery.ack()
                except UnimqError as exc:
                    assert exc.retryable, exc
                    failed_acks += 1

    consumer_task = asyncio.create_task(consume())
    try:
        await produce()
        await asyncio.wait_for(asyncio.shield(consumer_task), SETTLE)
    except TimeoutError:
        pass
    finally:
        consumer_task.cancel()
        await asyncio.gather(consumer_task, return_exceptions=True)
    return failed_acks


@pytest.mark.parametrize("target", [pytest.param(t, id=t.name, marks=pytest.mark.needs_broker(t.name))
                                    for t in TARGETS])
async def test_own_broker_restart_mid_stream(target: Any, own_broker: tuple[Any, str]) -> None:
    instance, url = own_broker
    brokers = _scripts_brokers()
    dest = _dest("restart")
    ledger = Ledger()
    took: list[float] = []

    async def restart() -> None:
        started = time.monotonic()
        assert await asyncio.to_thread(brokers.down, [instance], False)
        assert await asyncio.to_thread(brokers.up, [instance]), instance.log_since_start()
        took.append(time.monotonic() - started)

    async with asyncio.timeout(240), unimq.connect(url) as broker:
        await broker.ensure(dest, lock_timeout=LOCK)
        failed_acks = await _stream_through_restart(broker, dest, ledger, restart)
        # Admin operations work on the connection made before the restart, too.
        await broker.delete(dest)
        assert dest not in await broker.destinations()
    ledger.report(f"{target.name} own broker restart in {took[0]:.1f} s, failed acks {failed_acks}")
    assert not ledger.missing, f"{len(ledger.missing)} acknowledged sends lost, e.g. {sorted(ledger.missing)[:5]}"
