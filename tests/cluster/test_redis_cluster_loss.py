"""Redis Cluster under primary loss, measured with redis-py's RedisCluster directly: unimq's Redis
adapter does not support Redis Cluster yet (docs/reliability.md "Clusters" says what it needs).

Same stream as test_failover.py — XADD acknowledged sends, XREADGROUP + XACK — on one hash-tagged
stream. The primary owning its slot is SIGKILLed (its replica takes over after the 2 s node
timeout) and restarted; then the new primary's replica is SIGKILLed. Redis replicates
asynchronously, so writes the dead primary acknowledged but had not yet copied can be lost: the
loss is printed, and asserted to be confined to sends acknowledged in the last LOSS_WINDOW seconds
before the kill — anything acknowledged earlier, or after the failover, must be received.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
import uuid
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

pytestmark = pytest.mark.cluster

COUNT = 300
LIMIT = 1000
STEP = 40
LOSS_WINDOW = 1.0  #: replication lag the test tolerates, seconds before the SIGKILL
BOUND = 60.0


def _node(cluster: Any, port: int | str) -> Any:
    return next(n for n in cluster.nodes if n.port == int(port))


@pytest.mark.parametrize("backend", ["redis-cluster"])
async def test_primary_killed_mid_stream_loss_is_measured(cluster: Any, backend: str) -> None:
    stream = f"{{failover-{uuid.uuid4().hex[:10]}}}:stream"
    client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    attempted: set[int] = set()
    acked: dict[int, float] = {}
    received: set[int] = set()
    send_times: list[float] = []
    receive_times: list[float] = []
    failed_sends = 0
    killed_at = 0.0
    events: list[str] = []
    faults_done = asyncio.Event()
    producing_done = asyncio.Event()
    await client.xgroup_create(stream, "workers", id="0", mkstream=True)

    async def produce() -> None:
        nonlocal failed_sends
        for number in itertools.count():
            if number >= LIMIT or (number >= COUNT and faults_done.is_set()):
                break
            attempted.add(number)
            try:
                await asyncio.wait_for(client.xadd(stream, {"n": str(number)}), 5.0)
            except (RedisError, TimeoutError):
                failed_sends += 1
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
                deadline = deadline or time.monotonic() + 20.0
                if set(acked) <= received or time.monotonic() > deadline:
                    return
            try:
                reply: Any = await client.xreadgroup("workers", "c1", {stream: ">"}, count=50, block=500)
            except RedisError:
                await asyncio.sleep(0.1)
                continue
            for _, entries in reply or []:
                ids = []
                for entry_id, fields in entries:
                    received.add(int(fields[b"n"]))
                    receive_times.append(time.monotonic())
                    ids.append(entry_id)
                if ids:
                    with contextlib.suppress(RedisError):  # unacked entries stay pending: counted as received
                        await client.xack(stream, "workers", *ids)

    async def progress(more: int) -> None:
        target = len(acked) + more
        end = time.monotonic() + 12.0
        while len(acked) < target and time.monotonic() < end:
            await asyncio.sleep(0.05)

    async def faults() -> None:
        nonlocal killed_at
        try:
            await progress(STEP)
            primary = client.get_node_from_key(stream)
            assert primary is not None
            victim = _node(cluster, primary.port)
            killed_at = time.monotonic()
            os.killpg(victim.pid(), signal.SIGKILL)
            await progress(STEP)
            await asyncio.to_thread(_restart, victim)
            await progress(STEP)
            replica = None
            end = time.monotonic() + 10.0
            while replica is None and time.monotonic() < end:  # the restarted node rejoins as a replica
                await client.nodes_manager.initialize()
                replica = client.get_node_from_key(stream, replica=True)
                await asyncio.sleep(0.5)
            assert replica is not None, "the stream's slot has no replica 10 s after the restart"
            events.append(f"SIGKILL replica :{replica.port} (primary was :{victim.port})")
            os.killpg(_node(cluster, replica.port).pid(), signal.SIGKILL)
            await progress(STEP)
        finally:
            faults_done.set()

    try:
        await asyncio.wait_for(asyncio.gather(produce(), consume(), faults()), BOUND)
    finally:
        await client.aclose()
    lost = sorted(set(acked) - received)
    late = [n for n in lost if acked[n] < killed_at - LOSS_WINDOW or acked[n] > killed_at]
    stall = max((b - a for a, b in itertools.pairwise(send_times)), default=0.0)
    read_stall = max((b - a for a, b in itertools.pairwise(receive_times)), default=0.0)
    print(f"\nredis-cluster: acknowledged {len(acked)}, failed sends {failed_sends}, received {len(received)}, "
          f"LOST acknowledged writes {len(lost)} {lost[:20]}; producer stall {stall:.1f}s, consumer stall "
          f"{read_stall:.1f}s; " + "; ".join(events))
    assert len(acked) >= COUNT // 2
    assert received <= attempted, f"received never-sent entries: {sorted(received - attempted)[:10]}"
    assert not late, f"acknowledged writes lost outside the {LOSS_WINDOW}s replication window: {late[:20]}"


def _restart(node: Any) -> None:
    node.spawn()
    started = time.monotonic()
    while not node.startup_done(started):
        time.sleep(0.2)
