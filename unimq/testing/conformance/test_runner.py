"""The handler runner, ``broker.consume``: retries, dead-lettering, concurrency, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

import unimq
from unimq.reliability import DEAD_LETTER_REASON
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import bodies, dead_letters, expect_nothing, queue, until
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio

FAST_RETRY = unimq.Retry(max_attempts=5, initial=timedelta(milliseconds=50), max_delay=timedelta(milliseconds=200))


async def run_until(
    broker: unimq.Broker,
    dest: str,
    group: str | None,
    handler: Callable[[unimq.Delivery], Awaitable[Any]],
    done: Callable[[], bool],
    timing: Timing,
    **options: Any,
) -> bool:
    """Run ``broker.consume`` until ``done()`` holds (or ``timing.receive`` × 2 passes); True if it held."""
    stop = asyncio.Event()
    options.setdefault("shutdown_timeout", timing.quiet)
    runner = asyncio.create_task(broker.consume(dest, handler, group=group, stop=stop, **options))
    try:
        held = await until(lambda: done() or runner.done(), timing.receive * 2) and done()
    finally:
        stop.set()
        await asyncio.wait_for(runner, timing.receive)
    return held


@pytest.mark.requires("persistence")
async def test_failing_handler_retried_until_it_succeeds(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """A handler failing twice then succeeding: attempts 1, 2, 3, one success, nothing left; others unaffected."""
    dest, group = await queue(broker, names)
    sent = bodies(10, "ok")
    await broker.producer(dest).send_many([*sent, b"flaky"])
    attempts: list[int] = []
    succeeded: defaultdict[bytes, int] = defaultdict(int)

    async def handler(delivery: unimq.Delivery) -> None:
        if delivery.message.body == b"flaky":
            attempts.append(delivery.attempt)
            if delivery.attempt < 3:
                raise RuntimeError(f"transient failure {delivery.attempt}")
        succeeded[delivery.message.body] += 1

    finished = await run_until(broker, dest, group, handler, lambda: len(succeeded) == 11, timing, retry=FAST_RETRY)
    assert finished, f"processed {sorted(succeeded)}; flaky attempts {attempts}"
    assert attempts == [1, 2, 3]
    assert succeeded[b"flaky"] == 1
    async with broker.consumer(dest, group) as consumer:
        await expect_nothing(consumer, timing, "a message the runner processed was not acked")


@pytest.mark.requires("dead_letter")
async def test_always_failing_handler_dead_letters(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    dest, group = await queue(broker, names)
    await broker.producer(dest).send(b"doomed")
    attempts: list[int] = []

    async def handler(delivery: unimq.Delivery) -> None:
        attempts.append(delivery.attempt)
        raise ValueError(f"cannot handle {delivery.message.body!r}")

    retry = unimq.Retry(max_attempts=3, initial=timedelta(milliseconds=50), max_delay=timedelta(milliseconds=200))
    await run_until(broker, dest, group, handler, lambda: len(attempts) >= 3, timing, retry=retry)
    assert attempts == [1, 2, 3]
    [dead] = await dead_letters(broker, dest, 1, timing)
    assert dead.message.body == b"doomed"
    reason = dead.message.headers.get(DEAD_LETTER_REASON, "")
    assert "ValueError" in reason and "cannot handle b'doomed'" in reason, reason
    async with broker.consumer(dest, group) as consumer:
        await expect_nothing(consumer, timing, "a dead-lettered message stayed in its destination")


@pytest.mark.requires("persistence")
async def test_concurrency_processes_in_parallel(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    dest, group = await queue(broker, names)
    await broker.producer(dest).send_many(bodies(8, "par"))
    active = 0
    peak = 0
    done: set[bytes] = set()

    async def handler(delivery: unimq.Delivery) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.3)
        active -= 1
        done.add(delivery.message.body)

    finished = await run_until(broker, dest, group, handler, lambda: len(done) == 8, timing, concurrency=4)
    assert finished, f"processed only {len(done)} of 8"
    assert peak >= 2, "concurrency=4 never ran two handlers at once"


@pytest.mark.requires("persistence")
async def test_cancelling_the_runner_loses_nothing(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """Cancel consume() with handlers in flight: they are nacked, and a new runner finishes every message."""
    dest, group = await queue(broker, names)
    sent = set(bodies(20, "cancel"))
    await broker.producer(dest).send_many(sorted(sent))
    done: set[bytes] = set()

    async def handler(delivery: unimq.Delivery) -> None:
        await asyncio.sleep(0.1)
        done.add(delivery.message.body)

    runner = asyncio.create_task(broker.consume(dest, handler, group=group, concurrency=4, shutdown_timeout=0.01,
                                                lock_timeout=timing.lock))
    assert await until(lambda: len(done) >= 5 or runner.done(), timing.receive), "the runner processed nothing"
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(runner, timing.receive)
    assert len(done) < len(sent), "the runner finished everything before it was cancelled; nothing was tested"
    finished = await run_until(broker, dest, group, handler, lambda: done >= sent, timing,
                               concurrency=4, lock_timeout=timing.lock)
    assert finished, f"{len(sent - done)} messages lost after cancelling the runner"
