"""Recoverability of the handler runner on every backend: permanent failures, the kill switch
during a downstream outage, and long handlers whose lock is kept (renewed where ``lock_extension``)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import unimq
from unimq.recoverability import KillSwitch, Reject
from unimq.reliability import DEAD_LETTER_REASON
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import bodies, dead_letters, expect_nothing, queue, until
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio


async def run_until(
    broker: unimq.Broker,
    dest: str,
    group: str | None,
    handler: Callable[[unimq.Delivery], Any],
    done: Callable[[], bool],
    limit: float,
    **options: Any,
) -> bool:
    """Run ``broker.consume`` until ``done()`` holds or ``limit`` seconds pass; True if it held."""
    stop = asyncio.Event()
    runner = asyncio.create_task(broker.consume(dest, handler, group=group, stop=stop, handle_signals=False,
                                                **options))
    try:
        held = await until(lambda: done() or runner.done(), limit) and done()
    finally:
        stop.set()
        await asyncio.wait_for(runner, limit)
    return held


@pytest.mark.requires("dead_letter")
async def test_reject_and_give_up_on_dead_letter_at_once(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """``raise Reject(reason)`` and an exception in ``Retry(give_up_on=...)``: one attempt, then the
    dead-letter destination, with the reason (type, message, attempt) on the copy."""
    dest, group = await queue(broker, names)
    await broker.producer(dest).send_many([b"rejected", b"invalid"])
    attempts: Counter[bytes] = Counter()

    async def handler(delivery: unimq.Delivery) -> None:
        attempts[delivery.message.body] += 1
        if delivery.message.body == b"rejected":
            raise Reject("customer 42 does not exist")
        raise ValueError("amount must be positive")

    retry = unimq.Retry(max_attempts=5, initial=0.05, max_delay=0.2, give_up_on=(ValueError,))
    await run_until(broker, dest, group, handler, lambda: sum(attempts.values()) >= 2, timing.receive, retry=retry)
    dead = await dead_letters(broker, dest, 2, timing)
    reasons = {d.message.body: d.message.headers.get(DEAD_LETTER_REASON) for d in dead}
    assert reasons == {b"rejected": "customer 42 does not exist",
                       b"invalid": "ValueError: amount must be positive (attempt 1)"}
    assert attempts == {b"rejected": 1, b"invalid": 1}, "a permanent failure was retried"
    async with broker.consumer(dest, group) as consumer:
        await expect_nothing(consumer, timing, "a dead-lettered message stayed in its destination")


@pytest.mark.requires("persistence")
async def test_kill_switch_pauses_during_an_outage_and_loses_nothing(
    broker: unimq.Broker, names: Names, timing: Timing, caplog: pytest.LogCaptureFixture
) -> None:
    """A downstream service is down for the first three handler runs. The switch trips on the second
    failure, takes no message during the pause, probes with one message (which fails: a second
    pause), probes again, recovers; every message is processed and none is dead-lettered, although
    ``max_attempts=3`` with quick retries would have dead-lettered them without the switch."""
    dest, group = await queue(broker, names)
    sent = bodies(6, "ks")
    await broker.producer(dest).send_many(sent)
    restart = 1.5
    calls: list[tuple[float, bytes, bool]] = []  # (started, body, failed)
    processed: set[bytes] = set()

    async def handler(delivery: unimq.Delivery) -> None:
        down = len(calls) < 3
        calls.append((time.monotonic(), delivery.message.body, down))
        if down:
            raise ConnectionRefusedError("the payment service is down")
        processed.add(delivery.message.body)

    switch = KillSwitch(activation=2, trip=0.5, restart=restart, window=60)
    retry = unimq.Retry(max_attempts=3, initial=0.05, max_delay=0.1)
    with caplog.at_level(logging.INFO, logger="unimq.runner"):
        finished = await run_until(broker, dest, group, handler, lambda: processed >= set(sent),
                                   timing.receive * 3 + 2 * restart, retry=retry, kill_switch=switch)
    assert finished, f"processed {sorted(processed)} of {len(sent)}; handler runs: {len(calls)}"
    assert [failed for _, _, failed in calls[:4]] == [True, True, True, False]
    # The trip came with the second failure; the two probes each waited a whole pause.
    first_probe, second_probe = calls[2][0] - calls[1][0], calls[3][0] - calls[2][0]
    assert first_probe >= restart - timing.early, f"a message was taken {first_probe:.2f}s into a {restart}s pause"
    assert second_probe >= restart - timing.early, f"a message was taken {second_probe:.2f}s into a {restart}s pause"
    states = [r.getMessage() for r in caplog.records
              if r.name == "unimq.runner" and r.getMessage().startswith("kill switch of")]
    assert [re.findall(r": (\w+)", s)[0] for s in states] == ["tripped", "probing", "tripped", "probing",
                                                                "running"], states
    if broker.capabilities_for(dest).dead_letter:
        async with broker.consumer(broker.dead_letter_destination(dest)) as dlq:
            await expect_nothing(dlq, timing, "the outage dead-lettered a message")
    async with broker.consumer(dest, group) as consumer:
        await expect_nothing(consumer, timing, "a message processed after the outage was not acked")


@pytest.mark.requires("persistence")
async def test_long_handler_is_delivered_once(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """A handler that runs three lock periods sees its message exactly once: the runner extends the
    lock while it runs (``lock_extension``), or the backend holds the message without a lock."""
    caps = broker.capabilities_for(names.dest)
    options: dict[str, Any] = {}
    if caps.lock_extension and caps.lock_timeout:
        dest, group = await queue(broker, names, lock_timeout=timedelta(seconds=timing.lock))
        options["lock_timeout"] = timing.lock
    elif caps.lock_extension:  # the lock is the entity's own (fixed up front): renew that one
        dest, group = await queue(broker, names)
    else:
        assert caps.lock_extension.support == "none"
        dest, group = await queue(broker, names)
    await broker.producer(dest).send(b"long job")
    deliveries: list[int] = []
    done: list[float] = []

    async def handler(delivery: unimq.Delivery) -> None:
        deliveries.append(delivery.attempt)
        await asyncio.sleep(3 * timing.lock)
        done.append(time.monotonic())

    # concurrency=2: a free slot would take the message again if its lock expired.
    finished = await run_until(broker, dest, group, handler, lambda: bool(done) and time.monotonic() > done[0] + 0.5,
                               timing.receive + 4 * timing.lock, concurrency=2, **options)
    assert finished, "the long handler never finished"
    assert deliveries == [1], f"delivered {len(deliveries)} times (attempts {deliveries}) while its handler ran"
    async with broker.consumer(dest, group, **options) as consumer:
        await expect_nothing(consumer, timing, "the long job came back after its handler succeeded")
