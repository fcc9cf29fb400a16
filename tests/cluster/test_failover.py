"""Node loss mid-stream on the three-node clusters (issue 28), one test per clustered backend.

A producer sends numbered messages (``send()`` returns once the cluster confirmed the message) and
a consumer receives and acks, both without pause. The node leading the destination is SIGKILLed,
then restarted; then a follower is SIGKILLed (the fixture restarts it afterwards). Asserted: every
acknowledged send is received at least once, nothing is received that was never sent, the
consumer is not stuck (it drains everything within SETTLE seconds). The stall — the longest time
without a confirmed send (producer) or a receipt (consumer) — is printed per backend; the numbers
are in docs/reliability.md "Clusters".
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import unimq
from unimq.errors import UnimqError

pytestmark = pytest.mark.cluster

COUNT = 300  #: messages sent at least (more while the faults are still being injected)
LIMIT = 1000  #: messages sent at most
STEP = 40  #: confirmed sends between two faults
SETTLE = 30.0  #: longest wait for the consumer to receive every acknowledged send
BOUND = 60.0  #: the whole stream, faults included
GROUP = "workers"
PACE = 0.01  #: pause between two sends, so that the stream spans the faults


@dataclass
class Run:
    attempted: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    received: list[int] = field(default_factory=list)
    send_times: list[float] = field(default_factory=list)
    receive_times: list[float] = field(default_factory=list)
    failed_sends: int = 0
    failed_receives: int = 0
    failed_acks: int = 0
    events: list[str] = field(default_factory=list)

    def note(self, what: str, t0: float) -> None:
        self.events.append(f"{time.monotonic() - t0:5.1f}s {what}")


def stall(times: list[float]) -> float:
    """The longest time between two consecutive events (seconds)."""
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def kill(node: Any) -> None:
    pid = node.pid()
    assert pid is not None, f"{node.name} is not running"
    os.killpg(pid, signal.SIGKILL)
    node.wait_port_closed()


def restart(node: Any) -> None:
    node.spawn()
    started = time.monotonic()
    while not node.startup_done(started):
        time.sleep(0.2)


async def kafka_leader(cluster: Any, dest: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    admin = AIOKafkaAdminClient(bootstrap_servers=",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes
                                                           if n.pid() is not None))
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([dest])
        return int(topic["partitions"][0]["leader"]) - 1
    finally:
        await admin.close()


async def nats_leader(cluster: Any, dest: str) -> int:
    import nats
    from unimq_nats.mapping import stream_name

    nc = await nats.connect(servers=[f"nats://127.0.0.1:{n.port}" for n in cluster.nodes if n.pid() is not None])
    try:
        info = await nc.jetstream().stream_info(stream_name(dest))
    finally:
        await nc.close()
    assert info.cluster is not None and info.cluster.leader is not None
    return int(info.cluster.leader.removeprefix("n")) - 1


async def rabbitmq_leader(cluster: Any, dest: str) -> int:
    alive = next(n for n in cluster.nodes if n.pid() is not None)
    result = await asyncio.to_thread(cluster.ctl, alive, "list_queues", "name", "leader", "--no-table-headers",
                                     "--quiet")
    for row in result.stdout.splitlines():
        name, _, leader = row.partition("\t")
        if name == f"{dest}.{GROUP}":
            return next(i for i, n in enumerate(cluster.nodes) if n.node == leader.strip())
    raise AssertionError(f"no leader for {dest}.{GROUP} in:\n{result.stdout}")


LEADERS: dict[str, Callable[[Any, str], Awaitable[int]]] = {
    "kafka-cluster": kafka_leader, "nats-cluster": nats_leader, "rabbitmq-cluster": rabbitmq_leader,
}


async def stream_with_faults(cluster: Any, backend: str) -> Run:
    run = Run()
    dest = f"failover-{uuid.uuid4().hex[:10]}"
    t0 = time.monotonic()
    faults_done = asyncio.Event()
    producing_done = asyncio.Event()
    async with unimq.connect(cluster.url) as sending, unimq.connect(cluster.url) as receiving:
        await sending.ensure(dest)
        consumer = receiving.consumer(dest, GROUP)
        await consumer.receive(timeout=0)
        producer = sending.producer(dest)

        async def produce() -> None:
            number = 0
            while number < LIMIT and (number < COUNT or not faults_done.is_set()):
                run.attempted.add(number)
                try:
                    await asyncio.wait_for(producer.send(str(number).encode()), 15.0)
                except (UnimqError, TimeoutError):
                    run.failed_sends += 1
                    await asyncio.sleep(0.1)
                else:
                    run.acked.add(number)
                    run.send_times.append(time.monotonic())
                number += 1
                await asyncio.sleep(PACE)
            producing_done.set()

        async def consume() -> None:
            deadline: float | None = None
            while True:
                if producing_done.is_set():
                    deadline = deadline or time.monotonic() + SETTLE
                    if run.acked <= set(run.received) or time.monotonic() > deadline:
                        return
                try:
                    delivery = await consumer.receive(timeout=1.0)
                except UnimqError:
                    run.failed_receives += 1
                    await asyncio.sleep(0.1)
                    continue
                if delivery is None:
                    continue
                run.received.append(int(delivery.message.body))
                run.receive_times.append(time.monotonic())
                try:
                    await delivery.ack()
                except UnimqError:
                    run.failed_acks += 1

        async def progress(more: int, timeout: float = 12.0) -> None:
            target = len(run.acked) + more
            end = time.monotonic() + timeout
            while len(run.acked) < target and time.monotonic() < end and not producing_done.is_set():
                await asyncio.sleep(0.05)

        async def faults() -> None:
            try:
                await progress(STEP)
                leader = await LEADERS[backend](cluster, dest)
                run.note(f"SIGKILL leader {cluster.nodes[leader].name}", t0)
                kill(cluster.nodes[leader])
                await progress(STEP)
                run.note(f"{len(run.acked)} acked; restarting {cluster.nodes[leader].name}", t0)
                await asyncio.to_thread(restart, cluster.nodes[leader])
                run.note(f"{cluster.nodes[leader].name} back", t0)
                await progress(STEP)
                current = await LEADERS[backend](cluster, dest)
                follower = next(i for i in range(len(cluster.nodes)) if i not in (current, leader))
                run.note(f"SIGKILL follower {cluster.nodes[follower].name} (leader now "
                         f"{cluster.nodes[current].name})", t0)
                kill(cluster.nodes[follower])
                await progress(STEP)
                run.note(f"{len(run.acked)} acked", t0)
            finally:
                faults_done.set()

        await asyncio.wait_for(asyncio.gather(produce(), consume(), faults()), BOUND)
        await consumer.close()
    return run


@pytest.mark.parametrize("backend", ["kafka-cluster", "nats-cluster", "rabbitmq-cluster"])
async def test_leader_then_follower_killed_mid_stream(cluster: Any, backend: str) -> None:
    run = await stream_with_faults(cluster, backend)
    received = set(run.received)
    print(f"\n{backend}: sent {len(run.attempted)}, acknowledged {len(run.acked)}, failed sends "
          f"{run.failed_sends}, received {len(run.received)} ({len(run.received) - len(received)} duplicates), "
          f"failed receives {run.failed_receives}, failed acks {run.failed_acks}; "
          f"producer stall {stall(run.send_times):.1f}s, consumer stall {stall(run.receive_times):.1f}s\n  "
          + "\n  ".join(run.events))
    assert len(run.acked) >= COUNT // 2, "too few sends were acknowledged for the test to mean anything"
    assert received <= run.attempted, f"received never-sent messages: {sorted(received - run.attempted)[:10]}"
    lost = sorted(run.acked - received)
    assert not lost, f"{len(lost)} acknowledged sends never received (consumer stuck or data lost): {lost[:20]}"
