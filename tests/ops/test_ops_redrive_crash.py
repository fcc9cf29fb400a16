"""Redrive loses nothing when it is killed mid-way: copy → confirm → remove, resumed by running it again.

The redrive runs in a subprocess, slowed by ``rate=``, and is SIGKILLed once some messages are back
in the source. A second redrive then finishes the job. Every message must be in the source or
still dead-lettered; duplicates (same message_id: copied, not yet removed at the kill) are allowed
and counted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import pytest

import unimq
from unimq.testing.brokers import TARGETS

pytestmark = pytest.mark.timeout(120)

COUNT = 40
REDRIVE = """
import asyncio, sys, unimq
async def main(url, dest, rate):
    async with unimq.connect(url) as broker:
        report = await broker.redrive(dest, rate=float(rate))
        print(f"moved={report.moved} failed={report.failed}", flush=True)
asyncio.run(main(*sys.argv[1:4]))
"""


def redrive(url: str, dest: str, rate: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", REDRIVE, url, dest, rate], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


async def drain(broker: unimq.Broker, dest: str, quiet: float, deadline: float) -> list[str]:
    """Every message id received from ``dest`` (acked) until ``quiet`` seconds pass without one."""
    ids: list[str] = []
    async with broker.consumer(dest) as consumer:
        while time.monotonic() < deadline:
            batch = await consumer.receive_batch(100, timeout=quiet)
            if not batch:
                break
            ids += [d.message.message_id for d in batch]
            await consumer.ack_many(batch)
    return ids


#: RabbitMQ returns a killed consumer's unsettled messages at once (its connection closed); Service
#: Bus when their lock expires (``lock_timeout`` below).
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.needs_broker(n))
                                  for n in ("rabbitmq", "servicebus")])
async def test_a_redrive_killed_mid_way_loses_nothing(name: str, broker_url: Any) -> None:
    url = broker_url(name)
    timing = next(t.timing for t in TARGETS if t.name == name)
    dest = f"crash-{uuid.uuid4().hex[:8]}"
    ids = [f"m-{i:03d}" for i in range(COUNT)]
    async with unimq.connect(url) as broker:
        lock = timing.lock if broker.capabilities_for(dest).lock_timeout else None
        await broker.ensure(dest, dead_letter=True, lock_timeout=lock)
        try:
            await broker.producer(dest).send_many([unimq.Message(i.encode(), message_id=i) for i in ids])
            async with broker.consumer(dest) as consumer:
                rejected = 0
                while rejected < COUNT:
                    delivery = await consumer.receive(timeout=timing.receive)
                    assert delivery is not None, f"only {rejected} of {COUNT} arrived"
                    await delivery.reject("poison")
                    rejected += 1

            first = redrive(url, dest, "20")  # 20/s: two seconds for all of them
            deadline = time.monotonic() + 30
            while ((await broker.stats(dest)).depth or 0) < 5:
                assert first.poll() is None, first.communicate()
                assert time.monotonic() < deadline, "the redrive did not start moving messages"
                await asyncio.sleep(0.05)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            assert first.returncode == -signal.SIGKILL

            moved_before = (await broker.stats(dest)).depth or 0
            assert 0 < moved_before < COUNT, moved_before

            # Run it again until nothing is left: where the killed run's locks outlive it (Service
            # Bus), its messages are invisible to the next run until they expire.
            reruns, moved_after = 0, 0
            deadline = time.monotonic() + timing.lock + timing.receive * 2
            while await broker.dead_letters(dest, count=1) or moved_after + moved_before < COUNT:
                assert time.monotonic() < deadline, f"dead letters left after {reruns} reruns"
                moved_after += (await broker.redrive(dest)).moved
                reruns += 1
                await asyncio.sleep(0.2)

            deadline = time.monotonic() + timing.lock + timing.receive * 2
            back = await drain(broker, dest, timing.quiet, deadline)
            still = [d.message.message_id for d in await broker.dead_letters(dest, count=COUNT * 2)]
            seen = Counter(back + still)
            lost = sorted(set(ids) - set(seen))
            duplicates = sum(n - 1 for n in seen.values())
            print(f"{name}: moved before the kill={moved_before}, after it={moved_after} in {reruns} run(s), "
                  f"duplicates={duplicates}, lost={len(lost)}")
            assert lost == []
            assert set(seen) == set(ids)
            assert still == []  # the second run finished the job
            assert duplicates <= 5, seen.most_common(6)  # only those copied but not yet removed at the kill
        finally:
            await broker.delete(dest)


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


async def test_a_crash_between_copy_and_remove_leaves_a_duplicate_not_a_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one window a kill can hit: the copy is confirmed, the dead letter not yet removed."""
    async with unimq.connect(f"memory://crash-{uuid.uuid4().hex[:8]}") as broker:
        await broker.ensure("jobs", dead_letter=True)
        await broker.producer("jobs").send_many([unimq.Message(b"x", message_id=f"m-{i}") for i in range(3)])
        async with broker.consumer("jobs") as consumer:
            for delivery in await consumer.receive_many(3, 5):
                await delivery.reject("poison")

        real = unimq.Consumer.ack_many
        removed = 0

        async def ack_many_then_die(self: unimq.Consumer, deliveries: Any) -> None:
            nonlocal removed
            if removed == 1:
                raise Crash
            removed += 1
            await real(self, deliveries)

        monkeypatch.setattr(unimq.Consumer, "ack_many", ack_many_then_die)
        with pytest.raises(Crash):
            await broker.redrive("jobs")
        monkeypatch.undo()
        assert sorted(m.message_id for m in await broker.peek("jobs")) == ["m-0", "m-1"]  # m-1: copied, not removed

        report = await broker.redrive("jobs")
        assert (report.moved, report.failed) == (2, 0)
        back = Counter(m.message_id for m in await broker.peek("jobs", 10))
        assert back == {"m-0": 1, "m-1": 2, "m-2": 1}  # one duplicate, by message_id; nothing lost
        assert await broker.dead_letters("jobs") == []
