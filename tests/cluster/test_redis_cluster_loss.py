"""Redis Cluster under primary loss, through unimq's ``redis+cluster://`` adapter.

As in test_failover.py: a producer sends numbered messages (``send()`` returns once the primary
acknowledged the XADD) and a consumer of a group receives and acks. The primary owning the
destination's slot is SIGKILLed (its replica takes over after the 2 s node timeout) and restarted;
then the new primary's replica is SIGKILLed. Redis replicates asynchronously, so writes the dead
primary acknowledged but had not yet copied can be lost: the loss is printed, and asserted to be
confined to sends acknowledged in the last LOSS_WINDOW seconds before the kill — anything
acknowledged earlier, or after the failover, must be received.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from typing import Any

import pytest

import unimq
from unimq.errors import UnimqError

pytestmark = pytest.mark.cluster

COUNT = 300  #: messages sent at least (more while the faults are still being injected)
LIMIT = 1000  #: messages sent at most
STEP = 40  #: acknowledged sends between two faults
LOSS_WINDOW = 1.0  #: replication lag the test tolerates, seconds before the SIGKILL
SETTLE = 20.0  #: longest wait for the consumer to receive every acknowledged send
BOUND = 60.0  #: the whole stream, faults included
GROUP = "workers"


def _node(cluster: Any, port: int | str) -> Any:
    return next(n for n in cluster.nodes if n.port == int(port))


def _restart(node: Any) -> None:
    node.spawn()
    started = time.monotonic()
    while not node.startup_done(started):
        time.sleep(0.2)


@pytest.mark.parametrize("backend", ["redis-cluster"])
async def test_primary_killed_mid_stream_loss_is_measured(cluster: Any, backend: str) -> None:
    dest = f"failover-{uuid.uuid4().hex[:10]}"
    attempted: set[int] = set()
    acked: dict[int, float] = {}
    received: set[int] = set()
    send_times: list[float] = []
    receive_times: list[float] = []
    failed = {"sends": 0, "receives": 0, "acks": 0}
    killed_at = 0.0
    events: list[str] = []
    faults_done = asyncio.Event()
    producing_done = asyncio.Event()
    async with unimq.connect(cluster.url) as sending, unimq.connect(cluster.url) as receiving:
        await sending.ensure(dest, groups=(GROUP,))
        client = sending.native  # redis-py's RedisCluster: which node owns the stream's slot
        consumer = receiving.consumer(dest, GROUP)
        await consumer.receive(timeout=0)
        producer = sending.producer(dest)

        async def produce() -> None:
            for number in itertools.count():
                if number >= LIMIT or (number >= COUNT and faults_done.is_set()):
                    break
                attempted.add(number)
                try:
                    await asyncio.wait_for(producer.send(str(number).encode()), 15.0)
                except (UnimqError, TimeoutError):
                    failed["sends"] += 1
                    await asyncio.sleep(0.1)
                else:
                    acked[number] = time.monotonic()
                    send_times.append(acked[number])
                await asyncio.sleep(0.01)
            producing_done.set()

        async def consume() -> None:
            deadline: float | None = None
            while True:
                if producing_done.is_set():
                    deadline = deadline or time.monotonic() + SETTLE
                    if set(acked) <= received or time.monotonic() > deadline:
                        return
                try:
                    deliveries = await consumer.receive_many(50, 0.5)
                except UnimqError:
                    failed["receives"] += 1
                    await asyncio.sleep(0.1)
                    continue
                for delivery in deliveries:
                    received.add(int(delivery.message.body))
                    receive_times.append(time.monotonic())
                    try:
                        await delivery.ack()
                    except UnimqError:  # an unacked entry stays pending and comes again
                        failed["acks"] += 1

        async def progress(more: int) -> None:
            target = len(acked) + more
            end = time.monotonic() + 12.0
            while len(acked) < target and time.monotonic() < end:
                await asyncio.sleep(0.05)

        async def faults() -> None:
            nonlocal killed_at
            try:
                await progress(STEP)
                primary = client.get_node_from_key(dest)
                assert primary is not None
                victim = _node(cluster, primary.port)
                killed_at = time.monotonic()
                events.append(f"SIGKILL primary :{victim.port}")
                os.killpg(victim.pid(), signal.SIGKILL)
                await progress(STEP)
                await asyncio.to_thread(_restart, victim)
                await progress(STEP)
                replica = None
                end = time.monotonic() + 10.0
                while replica is None and time.monotonic() < end:  # the restarted node rejoins as a replica
                    await client.nodes_manager.initialize()
                    replica = client.get_node_from_key(dest, replica=True)
                    await asyncio.sleep(0.5)
                assert replica is not None, "the stream's slot has no replica 10 s after the restart"
                events.append(f"SIGKILL replica :{replica.port}")
                os.killpg(_node(cluster, replica.port).pid(), signal.SIGKILL)
                await progress(STEP)
            finally:
                faults_done.set()

        try:
            await asyncio.wait_for(asyncio.gather(produce(), consume(), faults()), BOUND)
        finally:
            await consumer.close()
            await sending.delete(dest)
    lost = sorted(set(acked) - received)
    late = [n for n in lost if acked[n] < killed_at - LOSS_WINDOW or acked[n] > killed_at]
    stall = max((b - a for a, b in itertools.pairwise(send_times)), default=0.0)
    read_stall = max((b - a for a, b in itertools.pairwise(receive_times)), default=0.0)
    print(f"\nredis-cluster (unimq): acknowledged {len(acked)}, failed {failed}, received {len(received)}, "
          f"LOST acknowledged writes {len(lost)} {lost[:20]}; producer stall {stall:.1f}s, consumer stall "
          f"{read_stall:.1f}s; " + "; ".join(events))
    assert len(acked) >= COUNT // 2
    assert received <= attempted, f"received never-sent entries: {sorted(received - attempted)[:10]}"
    assert not late, f"acknowledged writes lost outside the {LOSS_WINDOW}s replication window: {late[:20]}"
