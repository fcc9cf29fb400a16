"""Mirror, drain and verify: moving and checking messages between two backends.

A **mirror** is a long-running at-least-once bridge: it reads a source destination in its own
group, sends batches to the target (same message_id, key and headers), and acks the source only
after the target accepted them. Each message is stamped with the side it came from
(``x-unimq-origin``), and a mirror never forwards a message whose origin is its own target, so two
mirrors facing each other do not loop.

**Drain** mirrors (or handles) until the source is empty and idle, then stops.

**Verify** reads both sides in dedicated groups and reports missing, extra, duplicated and
out-of-order-per-key messages.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from unimq import telemetry
from unimq.broker import Broker, Consumer, Producer
from unimq.driver import Start
from unimq.errors import PublishError
from unimq.message import Delivery, Message
from unimq.reliability import ORIGIN


@dataclass
class MirrorStats:
    forwarded: int = 0
    skipped_loops: int = 0
    failed: int = 0
    batches: int = 0


class Mirror:
    """Forwards ``source_dest`` on ``source`` to ``target_dest`` on ``target``.

    ``origin`` labels the source side and ``target_origin`` the target side (defaults: the two
    brokers' URLs, secrets masked); messages stamped with ``target_origin`` came from the target and are acked
    without forwarding.
    """

    def __init__(
        self,
        source: Broker,
        source_dest: str,
        target: Broker,
        target_dest: str,
        *,
        group: str | None = "unimq-mirror",
        origin: str | None = None,
        target_origin: str | None = None,
        batch: int = 500,
    ) -> None:
        self.source, self.source_dest = source, source_dest
        self.target, self.target_dest = target, target_dest
        self.group = group if source.capabilities_for(source_dest).fanout else None
        self.origin = origin or source.url
        self.target_origin = target_origin or target.url
        if self.origin == self.target_origin:
            raise ValueError("origin and target_origin must differ, or mirrors facing each other would loop")
        self.batch = batch
        self.stats = MirrorStats()

    async def run(self, stop: asyncio.Event | None = None, idle: float | None = None,
                  on_batch: Callable[[MirrorStats], Any] | None = None) -> MirrorStats:
        """Mirror until ``stop`` is set, or until nothing arrived for ``idle`` seconds."""
        stop = stop or asyncio.Event()
        producer = self.target.producer(self.target_dest)
        last = time.monotonic()
        async with self.source.consumer(self.source_dest, self.group, prefetch=self.batch * 2) as consumer:
            while not stop.is_set():
                deliveries = await consumer.receive_batch(self.batch, 1.0 if idle is None else min(1.0, idle))
                if not deliveries:
                    if idle is not None and time.monotonic() - last >= idle:
                        break
                    continue
                last = time.monotonic()
                await self._forward(consumer, producer, deliveries)
                if on_batch is not None:
                    on_batch(self.stats)
        return self.stats

    async def _forward(self, consumer: Consumer, producer: Producer, deliveries: list[Delivery]) -> None:
        target_origin = self.target_origin
        forward = [d for d in deliveries if d.message.headers.get(ORIGIN) != target_origin]
        if len(forward) < len(deliveries):
            loops = [d for d in deliveries if d.message.headers.get(ORIGIN) == target_origin]
            self.stats.skipped_loops += len(loops)
            await consumer.ack_many(loops)
        if not forward:
            return
        copies = [self._copy(d.message) for d in forward]
        tel = telemetry.current
        results: list[BaseException | None]
        if tel is not None:  # one send per message, inside its delivery's span, so traces continue
            results = []
            for delivery, copy in zip(forward, copies, strict=True):
                with tel.handling(self.source.backend, self.source_dest, self.group, delivery):
                    try:
                        await producer.send(copy)
                        results.append(None)
                    except PublishError as exc:
                        results.append(exc)
        else:
            try:
                await producer.send_many(copies)
                results = [None] * len(copies)
            except PublishError as exc:
                results = list(exc.results)
        self.stats.batches += 1
        landed = [d for d, result in zip(forward, results, strict=True) if result is None]
        self.stats.forwarded += len(landed)
        await consumer.ack_many(landed)
        for delivery, result in zip(forward, results, strict=True):
            if result is not None:
                self.stats.failed += 1
                await delivery.nack()

    def _copy(self, message: Message) -> Message:
        headers = dict(message.headers)
        headers.setdefault(ORIGIN, self.origin)
        return replace(message, headers=headers, delay=None)


async def drain(
    broker: Broker,
    destination: str,
    *,
    group: str | None = None,
    into: tuple[Broker, str] | None = None,
    handler: Callable[[Delivery], Awaitable[Any]] | None = None,
    idle: float = 5.0,
) -> int:
    """Consume ``destination`` until it is empty and idle for ``idle`` seconds; return the count.

    Each message is forwarded ``into`` another (broker, destination) or given to ``handler``;
    it is acked only after that succeeded.
    """
    if (into is None) == (handler is None):
        raise ValueError("drain needs exactly one of into= or handler=")
    if into is not None:
        mirror = Mirror(broker, destination, into[0], into[1], group=group)
        stats = await mirror.run(idle=idle)
        return stats.forwarded
    assert handler is not None
    count = 0
    async with broker.consumer(destination, group) as consumer:
        while (delivery := await consumer.receive(timeout=idle)) is not None:
            await handler(delivery)
            await delivery.ack()
            count += 1
    return count


@dataclass
class VerifyReport:
    old_count: int = 0
    new_count: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    duplicated_old: dict[str, int] = field(default_factory=dict)
    duplicated_new: dict[str, int] = field(default_factory=dict)
    out_of_order_keys: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.out_of_order_keys)

    def ok(self, tolerance: int = 0) -> bool:
        return self.problems <= tolerance

    def summary(self) -> str:
        return (f"old {self.old_count}, new {self.new_count}: missing on new {len(self.missing)}, "
                f"extra on new {len(self.extra)}, duplicated old {len(self.duplicated_old)} / "
                f"new {len(self.duplicated_new)}, keys out of order {len(self.out_of_order_keys)}")


async def read_all(broker: Broker, destination: str, group: str | None, idle: float) -> list[tuple[str, str | None]]:
    """(message_id, key) of every message a group reads until idle; each is acked."""
    caps = broker.capabilities_for(destination)
    start: Start = "earliest" if caps.replay else None
    out: list[tuple[str, str | None]] = []
    group = group if caps.fanout else None
    async with broker.consumer(destination, group, prefetch=500, start=start) as consumer:
        while (delivery := await consumer.receive(timeout=idle)) is not None:
            out.append((delivery.message.message_id, delivery.message.key))
            await delivery.ack()
    return out


async def verify(
    old: Broker, old_dest: str, new: Broker, new_dest: str, *, group: str = "unimq-verify", idle: float = 5.0
) -> VerifyReport:
    """Compare what the two sides carry, reading each in ``group`` until idle."""
    old_seen, new_seen = await asyncio.gather(
        read_all(old, old_dest, group, idle), read_all(new, new_dest, group, idle)
    )
    return compare(old_seen, new_seen)


def compare(old_seen: list[tuple[str, str | None]], new_seen: list[tuple[str, str | None]]) -> VerifyReport:
    old_counts = Counter(i for i, _ in old_seen)
    new_counts = Counter(i for i, _ in new_seen)
    report = VerifyReport(old_count=len(old_counts), new_count=len(new_counts))
    report.missing = sorted(set(old_counts) - set(new_counts))
    report.extra = sorted(set(new_counts) - set(old_counts))
    report.duplicated_old = {i: n for i, n in old_counts.items() if n > 1}
    report.duplicated_new = {i: n for i, n in new_counts.items() if n > 1}
    common = set(old_counts) & set(new_counts)
    new_order = _first_order_by_key(new_seen, common)
    report.out_of_order_keys = sorted(
        key for key, order in _first_order_by_key(old_seen, common).items() if order != new_order.get(key)
    )
    return report


def _first_order_by_key(seen: list[tuple[str, str | None]], common: set[str]) -> dict[str, list[str]]:
    order: dict[str, list[str]] = defaultdict(list)
    first: set[str] = set()
    for message_id, key in seen:
        if key is not None and message_id in common and message_id not in first:
            first.add(message_id)
            order[key].append(message_id)
    return order
