"""unimq.sync: a conformance-style subset through the blocking facade, on memory:// and real brokers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import unimq
import unimq.sync
from unimq.errors import Closed
from unimq.testing.brokers import timing_for

TARGETS = [
    pytest.param("memory"),
    pytest.param("redis", marks=pytest.mark.needs_broker("redis")),
    pytest.param("rabbitmq", marks=pytest.mark.needs_broker("rabbitmq")),
    pytest.param("nats", marks=pytest.mark.needs_broker("nats")),
    pytest.param("sqs", marks=pytest.mark.needs_broker("sqs")),
    pytest.param("kafka", marks=pytest.mark.needs_broker("kafka")),
]


class Queue:
    """A fresh destination (and group on fan-out backends) on one target, deleted afterwards."""

    def __init__(self, broker: unimq.sync.Broker, receive: float) -> None:
        self.broker = broker
        self.receive = receive
        self.dest = f"sync-{uuid.uuid4().hex[:10]}"
        self.group = f"g-{uuid.uuid4().hex[:6]}" if broker.capabilities_for(self.dest).fanout else None
        broker.ensure(self.dest, groups=(self.group,) if self.group else ())

    def consumer(self) -> unimq.sync.Consumer:
        return self.broker.consumer(self.dest, self.group)


@pytest.fixture(params=TARGETS)
def queue(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> Iterator[Queue]:
    url = broker_url(request.param)
    with unimq.sync.connect(url) as broker:
        q = Queue(broker, timing_for(url).receive)
        try:
            yield q
        finally:
            for name in (q.dest, broker.dead_letter_destination(q.dest)):
                broker.delete(name)


def test_send_receive_ack(queue: Queue) -> None:
    sent = queue.broker.send(queue.dest, b"hello", key="k1", headers={"h": "v"})
    with queue.consumer() as consumer:
        delivery = consumer.receive(timeout=queue.receive)
        assert delivery is not None
        assert delivery.message.body == b"hello"
        assert delivery.message.message_id == sent.message_id
        assert delivery.message.headers["h"] == "v"
        assert delivery.attempt == 1
        delivery.ack()
        assert delivery.settled
        assert consumer.receive(timeout=0.5) is None


def test_nack_redelivers_and_reject_dead_letters(queue: Queue) -> None:
    queue.broker.send(queue.dest, b"again")
    with queue.consumer() as consumer:
        first = consumer.receive(timeout=queue.receive)
        assert first is not None
        first.nack()
        second = consumer.receive(timeout=queue.receive)
        assert second is not None and second.message.body == b"again"
        assert second.attempt == 2
        second.reject(reason="sync reject")
    with queue.broker.consumer(queue.broker.dead_letter_destination(queue.dest)) as dlq:
        dead = dlq.receive(timeout=queue.receive)
        assert dead is not None and dead.message.body == b"again"
        dead.ack()


def test_send_many_and_iterate(queue: Queue) -> None:
    bodies = [f"m{i}".encode() for i in range(20)]
    queue.broker.producer(queue.dest).send_many(bodies)
    got: list[bytes] = []
    with queue.consumer() as consumer:
        for delivery in consumer:
            got.append(delivery.message.body)
            delivery.ack()
            if len(got) == len(bodies):
                break
    assert sorted(got) == sorted(bodies)


def test_many_threads_share_one_broker(queue: Queue) -> None:
    def produce(worker: int) -> None:
        for i in range(10):
            queue.broker.send(queue.dest, f"{worker}-{i}".encode())

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(produce, range(4)))
    got: set[bytes] = set()
    lock = threading.Lock()
    with queue.consumer() as consumer:

        deadline = time.monotonic() + queue.receive

        def drain() -> None:
            while time.monotonic() < deadline:
                with lock:
                    if len(got) == 40:
                        return
                delivery = consumer.receive(timeout=0.2)
                if delivery is None:
                    continue
                delivery.ack()  # settled from a thread other than the one that received it: fine
                with lock:
                    got.add(delivery.message.body)

        with ThreadPoolExecutor(3) as pool:
            for future in [pool.submit(drain) for _ in range(3)]:
                future.result()
    assert len(got) == 40


def test_calling_from_the_loop_thread_and_after_close_are_clear_errors() -> None:
    broker = unimq.sync.connect("memory://sync-errors")

    async def inside() -> None:
        broker.send("q", b"x")

    with pytest.raises(RuntimeError, match="its own event loop"):
        broker.call(inside())
    broker.close()
    broker.close()  # idempotent
    with pytest.raises(Closed):
        broker.send("q", b"x")


def test_a_bad_url_fails_connect_and_leaves_no_thread() -> None:
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(unimq.ConfigError):
        unimq.sync.connect("nosuchscheme://x")
    assert not [t for t in threading.enumerate() if t.ident not in before and t.name == "unimq-sync-loop"]
