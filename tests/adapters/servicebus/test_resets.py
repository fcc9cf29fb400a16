"""Connection resets during settlement: no loss, the consumer survives, no leaked SDK handlers.

Regression test for 44977e2: overlapping SDK reopens of one receiver after a reset orphaned whole
``ReceiveClientAsync`` handlers (connection, session, keep-alive task: ~20 per reset with 32
concurrent handlers), and b22d952: the consumer died with "Handler failed" instead of reopening.
Before 44977e2 this test found 3 to 15 live handlers after the 8 resets (seven runs); since, 1 in every run.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections.abc import Iterator
from datetime import timedelta

import pytest
from azure.servicebus._pyamqp.aio import ReceiveClientAsync

import unimq
from unimq.testing.faultproxy import FaultProxy

MESSAGES = 300
BATCH = 25
CONCURRENCY = 16
RESET_EVERY = 0.7
#: Resets while sent messages are still unhandled; then the rest settles without faults.
RESETS = 8
#: Live receive handlers allowed for the one consumer (its receiver, and one being replaced).
MAX_RECEIVE_CLIENTS = 2
#: pytest's log capture keeps every record, and with it the exceptions logged (the SDK's
#: tracebacks; unimq's warnings take the exception as an argument), whose frames hold old
#: connections alive: the SDK's loggers are silenced, unimq's records keep only their text.
SDK_LOGGERS = ("azure", "uamqp", "pyamqp")
UNIMQ_LOGGERS = ("unimq.consumer", "unimq.runner")


class _TextOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = record.getMessage(), None
        return True


@pytest.fixture
def logs_hold_no_objects() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    text_only = _TextOnly()
    for name in UNIMQ_LOGGERS:
        logging.getLogger(name).addFilter(text_only)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for name in UNIMQ_LOGGERS:
        logging.getLogger(name).removeFilter(text_only)


def _live_receive_clients() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, ReceiveClientAsync))


@pytest.mark.usefixtures("logs_hold_no_objects")
async def test_resets_during_settlement_lose_nothing_and_leak_no_handlers(
        broker: unimq.Broker, sb_url: str, name: str) -> None:
    # A short lock: a message whose settlement a reset cut off comes back after 5 s, not 60.
    await broker.ensure(name, lock_timeout=timedelta(seconds=5))
    sent: set[int] = set()
    handled: set[int] = set()
    resets_while_pending = 0

    def pending() -> bool:
        return not sent <= handled

    async def handle(delivery: unimq.Delivery) -> None:
        await asyncio.sleep(random.uniform(0.05, 0.1))  # spreads the acks: some are always in flight
        handled.add(int(delivery.message.body))

    async def produce(flaky: unimq.Broker) -> None:
        producer = flaky.producer(name)
        for start in range(0, MESSAGES, BATCH):
            ids = range(start, start + BATCH)
            await producer.send_many([str(i).encode() for i in ids])
            sent.update(ids)

    async def reset(proxy: FaultProxy) -> None:
        nonlocal resets_while_pending
        while resets_while_pending < RESETS:
            await asyncio.sleep(RESET_EVERY)
            if pending():
                await proxy.reset_all()
                resets_while_pending += 1

    async with FaultProxy.for_url(sb_url) as proxy, unimq.connect(proxy.url(sb_url)) as flaky:
        async with asyncio.timeout(10):
            await produce(flaky)  # before the first reset: every message is sent
        stop = asyncio.Event()
        consumer = asyncio.create_task(flaky.consume(name, handle, concurrency=CONCURRENCY, stop=stop))
        resetter = asyncio.create_task(reset(proxy))
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while pending() and not consumer.done() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
            assert not consumer.done(), "consume() ended during the resets"
            live = _live_receive_clients()
        finally:
            resetter.cancel()
            stop.set()
            await asyncio.wait_for(consumer, 10)  # raises whatever consume() died of
    assert sent <= handled, f"{len(sent - handled)} lost (after 30 s): {sorted(sent - handled)[:20]}"
    assert resets_while_pending == RESETS, resets_while_pending
    assert live <= MAX_RECEIVE_CLIENTS, f"{live} live ReceiveClientAsync after {resets_while_pending} resets"
