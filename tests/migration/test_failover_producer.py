"""FailoverProducer through a real outage: a private Redis (scripts/brokers' Redis class on a free
port, data under tmp_path) is the primary and is stopped mid-stream; the shared Redis is the
secondary. Nothing the producer acknowledged is lost: what went to the secondary is journaled and
received there, and once the primary is back (its health answers) sends go to it again.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import unimq
from unimq import Consumer
from unimq.migrate import FailoverProducer, Journal

ROOT = Path(__file__).resolve().parents[2]
BURST = 10


def _scripts_brokers() -> ModuleType:
    name = "unimq_scripts_brokers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "brokers.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    """A private redis-server (append-only file) on a free port, stopped afterwards."""
    brokers = _scripts_brokers()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    instance = brokers.Redis(home=tmp_path / "redis")
    instance.port = port
    instance.url = f"redis://127.0.0.1:{port}/0"
    assert brokers.up([instance]), f"the private redis did not start:\n{instance.log_since_start()}"
    try:
        yield instance
    finally:
        brokers.down([instance])


async def _drain(consumer: Consumer, count: int, timeout: float = 10.0) -> list[str]:
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    while len(ids) < count and time.monotonic() < deadline:
        delivery = await consumer.receive(timeout=1.0)
        if delivery is not None:
            ids.append(delivery.message.message_id)
            await delivery.ack()
    return ids


@pytest.mark.needs_broker("redis")
async def test_sends_go_to_the_secondary_while_the_primary_is_down(
        own_redis: Any, broker_url: Callable[[str], str], tmp_path: Path) -> None:
    brokers = _scripts_brokers()
    dest = f"failover-{uuid.uuid4().hex[:8]}"
    journal = Journal(tmp_path / "journal")
    async with unimq.connect(own_redis.url) as primary, unimq.connect(broker_url("redis")) as secondary:
        await primary.ensure(dest)
        await secondary.ensure(dest)
        on_primary = primary.consumer(dest, "g")
        on_secondary = secondary.consumer(dest, "g")
        await on_primary.receive(timeout=0)
        await on_secondary.receive(timeout=0)
        failover = FailoverProducer(primary.producer(dest), secondary.producer(dest), journal,
                                    after=1.0, send_timeout=2.0, probe=primary, check_every=0.2)
        async with failover:
            before = [(await failover.send(f"before-{i}")).message_id for i in range(BURST)]
            assert failover.active == "primary"

            await on_primary.close()
            brokers.down([own_redis], wipe=False)
            started = time.monotonic()
            during = [(await failover.send(f"during-{i}")).message_id for i in range(BURST)]
            switched_after = time.monotonic() - started
            assert (failover.active, failover.switches) == ("secondary", 1)
            assert sorted(m.message_id for _, m in journal.pending()) == sorted(during)
            assert {d for d, _ in journal.pending()} == {dest}

            assert brokers.up([own_redis])
            deadline = time.monotonic() + 15
            while failover.active != "primary" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert failover.active == "primary", "no switch back although the primary's health is ok"
            after = [(await failover.send(f"after-{i}")).message_id for i in range(BURST)]

        print(f"\nfailover: first send in the outage waited {switched_after:.1f}s (bound 1.0s)")
        assert sorted(await _drain(on_secondary, BURST)) == sorted(during)
        on_primary = primary.consumer(dest, "g")
        received = await _drain(on_primary, 2 * BURST)
        assert sorted(received) == sorted(before + after)
