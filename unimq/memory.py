"""``memory://[name]``: an embedded in-process broker with full semantics.

For demos, unit tests and single-process apps. Brokers with the same name in one process share
their destinations. A destination fans out to its groups; each group is a queue with competing
consumers, priorities, per-key ordering, locks that expire, delayed and scheduled messages, TTL,
a de-duplication window and a dead-letter destination (``<destination>.dlq``).

Per-key ordering: while one consumer of a group holds messages of a key, the other consumers of
that group do not receive that key (as a Kafka partition or a Service Bus session would behave).
Messages are kept until consumed, in process memory: a process exit loses them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from unimq.capabilities import Capabilities, emulated, native, none
from unimq.driver import DestinationSpec, Driver, ReceiveSettings, Stats, Subscription
from unimq.errors import NotFound
from unimq.message import Delivery, Message
from unimq.reliability import DedupWindow, dead_letter_copy, dedup_key
from unimq.url import BrokerURL

DEFAULT_GROUP = ""


class MemoryOptions(BaseModel):
    """Query parameters of ``memory://`` URLs."""

    model_config = ConfigDict(extra="forbid")

    lock_timeout: float = Field(30.0, gt=0, description="seconds an unsettled message stays locked")
    max_message_bytes: int = Field(1024 * 1024, ge=1)
    auto_create: bool = Field(True, description="create destinations on first use; false → NotFound")


class _Entry:
    """One message as queued in one group, and its lease while in flight (a message has at most
    one: the lease lives on the entry, one object fewer per delivery)."""

    __slots__ = ("deadline", "deliveries", "expires_at", "message", "owner", "rank", "seq")

    def __init__(self, message: Message, seq: int, rank: int, expires_at: float) -> None:
        self.message = message
        self.seq = seq
        self.rank = rank
        self.expires_at = expires_at
        self.deliveries = 0
        self.owner: object = None
        self.deadline = 0.0


class _Run:
    """Plain messages (no priority, delay or ttl) of one publish, in order, with consecutive
    sequence numbers: one object per publish instead of an entry and a heap tuple per message
    (a backlog of those was traversed by every full garbage collection: half a send_many's CPU).
    The entry is made when the message is received; ``seq`` is the sequence number of the first."""

    __slots__ = ("messages", "seq")

    def __init__(self, seq: int, messages: deque[Message]) -> None:
        self.seq = seq
        self.messages = messages


class _Group:
    """A queue: ready heap by (priority, sequence) beside the runs of plain messages, delayed
    heap, leases, per-key holds."""

    def __init__(self, destination: _Destination, name: str) -> None:
        self.destination = destination
        self.name = name
        self.ready: list[tuple[int, int, _Entry]] = []
        self.runs: deque[_Run] = deque()
        self.delayed: list[tuple[float, int, _Entry]] = []
        self.inflight: dict[int, _Entry] = {}
        self.leases: deque[tuple[float, int]] = deque()
        self.key_holds: dict[str, list[Any]] = {}  # key -> [owner, count in flight]
        self.blocked: dict[str, deque[_Entry]] = {}
        self.waiters: list[asyncio.Future[None]] = []
        self.expired = 0

    def depth(self) -> int:
        return (len(self.ready) + len(self.delayed) + sum(len(q) for q in self.blocked.values())
                + sum(len(run.messages) for run in self.runs))

    def head(self, count: int) -> list[Message]:
        """The next ``count`` ready messages in delivery order (heap and runs merged)."""
        queued = [(rank, seq, entry.message) for rank, seq, entry in heapq.nsmallest(count, self.ready)]
        wanted = count
        for run in self.runs:
            if wanted <= 0:
                break
            queued += [(0, run.seq + i, m) for i, m in enumerate(itertools.islice(run.messages, wanted))]
            wanted -= len(run.messages)
        return [message for _, _, message in heapq.nsmallest(count, queued, key=itemgetter(0, 1))]

    def enqueue(self, entry: _Entry, due: float = 0.0) -> None:
        if due:
            heapq.heappush(self.delayed, (due, entry.seq, entry))
        else:
            heapq.heappush(self.ready, (entry.rank, entry.seq, entry))

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_result(None)

    def maintain(self, now: float) -> None:
        """Promote due delayed messages and return messages whose lock expired."""
        delayed = self.delayed
        while delayed and delayed[0][0] <= now:
            _, _, due = heapq.heappop(delayed)
            heapq.heappush(self.ready, (due.rank, due.seq, due))
        leases, inflight = self.leases, self.inflight
        while leases:
            deadline, token = leases[0]
            entry = inflight.get(token)
            if entry is None:
                leases.popleft()
            elif entry.deadline > now:
                if deadline >= entry.deadline:
                    break
                leases.popleft()
                leases.append((entry.deadline, token))
            else:
                leases.popleft()
                del inflight[token]
                self._release_key(entry.message.key)
                heapq.heappush(self.ready, (entry.rank, entry.seq, entry))

    def next_event(self) -> float:
        times = []
        if self.delayed:
            times.append(self.delayed[0][0])
        if self.leases:
            times.append(self.leases[0][0])
        return min(times) if times else float("inf")

    def take(self, owner: object, limit: int, lock: float) -> list[Delivery]:
        now = time.monotonic()
        self.maintain(now)
        out: list[Delivery] = []
        ready, runs, holds, blocked = self.ready, self.runs, self.key_holds, self.blocked
        inflight, leases, tokens = self.inflight, self.leases, self.destination.server.tokens
        deadline = now + lock
        while len(out) < limit:
            if runs:
                run = runs[0]
                if ready and ready[0] < (0, run.seq):
                    entry = heapq.heappop(ready)[2]
                else:
                    entry = _Entry(run.messages.popleft(), run.seq, 0, 0.0)
                    run.seq += 1
                    if not run.messages:
                        runs.popleft()
            elif ready:
                entry = heapq.heappop(ready)[2]
            else:
                break
            if entry.expires_at and entry.expires_at <= now:
                self.expired += 1
                if self.destination.spec.dead_letter_expired:
                    self.destination.dead_letter(entry.message, "expired (ttl) before it was received", self.name)
                continue
            key = entry.message.key
            if key is not None:
                hold = holds.get(key)
                if key in blocked or (hold is not None and hold[0] is not owner):
                    blocked.setdefault(key, deque()).append(entry)
                    continue
                if hold is None:
                    holds[key] = [owner, 1]
                else:
                    hold[1] += 1
            entry.deliveries += 1
            token = next(tokens)
            entry.owner = owner
            entry.deadline = deadline
            inflight[token] = entry
            leases.append((deadline, token))
            out.append(Delivery(entry.message, entry.deliveries, entry, token))
        return out

    def settle(self, token: int) -> _Entry | None:
        entry = self.inflight.pop(token, None)
        if entry is None:
            return None  # the lock expired and the message went back to the queue
        if entry.message.key is not None:
            self._release_key(entry.message.key)
        return entry

    def extend(self, token: int, seconds: float) -> bool:
        entry = self.inflight.get(token)
        if entry is None:
            return False
        entry.deadline = time.monotonic() + seconds
        return True

    def release_owner(self, owner: object) -> None:
        for token, entry in list(self.inflight.items()):
            if entry.owner is owner:
                del self.inflight[token]
                self._release_key(entry.message.key)
                heapq.heappush(self.ready, (entry.rank, entry.seq, entry))
        self.notify()

    def _release_key(self, key: str | None) -> None:
        if key is None:
            return
        hold = self.key_holds.get(key)
        if hold is None:
            return
        hold[1] -= 1
        if hold[1] <= 0:
            del self.key_holds[key]
            for entry in self.blocked.pop(key, ()):
                heapq.heappush(self.ready, (entry.rank, entry.seq, entry))
            self.notify()


class _Destination:
    def __init__(self, server: _Server, name: str, spec: DestinationSpec) -> None:
        self.server = server
        self.name = name
        self.spec = spec
        self.groups: dict[str, _Group] = {DEFAULT_GROUP: _Group(self, DEFAULT_GROUP)}
        self.dedup = DedupWindow(spec.deduplication.total_seconds()) if spec.deduplication else None

    def group(self, name: str | None) -> _Group:
        key = name or DEFAULT_GROUP
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(self, key)
        return group

    def publish(self, messages: Sequence[Message]) -> None:
        now = time.monotonic()
        stamp = datetime.now(UTC)
        dedup = self.dedup
        server = self.server
        seq = server.seq
        runs: list[_Run] = []
        others: list[tuple[_Entry, float]] = []
        run: deque[Message] | None = None
        for message in messages:
            if dedup is not None and dedup.seen(dedup_key(message), now):
                continue
            if message.timestamp is None:
                message.timestamp = stamp
            if message.priority or message.ttl or message.delay:
                run = None
                expires = now + message.ttl.total_seconds() if message.ttl else 0.0
                due = now + message.delay.total_seconds() if message.delay else 0.0
                others.append((_Entry(message, seq, -(message.priority or 0), expires), due))
            else:
                if run is None:
                    run = deque()
                    runs.append(_Run(seq, run))
                run.append(message)
            seq += 1
        server.seq = seq
        for i, group in enumerate(self.groups.values()):
            if i == 0:
                group.runs.extend(runs)
                for entry, due in others:
                    group.enqueue(entry, due)
            else:
                group.runs.extend(_Run(r.seq, deque(_group_copy(m) for m in r.messages)) for r in runs)
                for entry, due in others:
                    group.enqueue(_Entry(_group_copy(entry.message), entry.seq, entry.rank, entry.expires_at), due)
            group.notify()

    def dead_letter(self, message: Message, reason: str, group: str) -> None:
        target = self.server.destination(f"{self.name}.dlq", create=True)
        target.publish([dead_letter_copy(message, reason, self.name, group or None)])


def _group_copy(m: Message) -> Message:
    """A copy with headers of its own for each further group (positional: ``replace`` cost more
    than the rest of a publish)."""
    return Message(m.body, m.key, dict(m.headers), m.message_id, m.correlation_id, m.reply_to, m.content_type,
                   m.timestamp, m.delay, m.ttl, m.priority)


class _Server:
    """One named in-process broker."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.destinations: dict[str, _Destination] = {}
        self.seq = 0
        self.tokens = itertools.count(1)

    def destination(self, name: str, create: bool, spec: DestinationSpec | None = None) -> _Destination:
        dest = self.destinations.get(name)
        if dest is None:
            if not create:
                raise NotFound(f"memory://{self.name}: no destination {name!r} (auto_create is off; call ensure())")
            dest = self.destinations[name] = _Destination(self, name, spec or DestinationSpec())
        return dest


_SERVERS: dict[str, _Server] = {}


class MemorySubscription(Subscription):
    """A reader of one group. Acks cost no round trip, so they are not batched."""

    ack_batch = None
    native_reject = True

    def __init__(self, driver: MemoryDriver, destination: str, group: str | None, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._destination = destination
        self._group_name = group
        self._lock = settings.lock_timeout or driver.options.lock_timeout
        self._group: _Group | None = None

    async def open(self) -> None:
        dest = self._driver.server.destination(self._destination, self._driver.options.auto_create)
        self._group = dest.group(self._group_name)
        self.max_deliveries = dest.spec.max_deliveries
        if dest.spec.lock_timeout and self._lock == self._driver.options.lock_timeout:
            self._lock = dest.spec.lock_timeout.total_seconds()
        self.lock_timeout = self._lock

    def _g(self) -> _Group:
        assert self._group is not None, "subscription not opened"
        return self._group

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        group = self._g()
        out = group.take(self, max_messages, self._lock)
        if out or timeout <= 0:
            return out
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            wait = min(deadline - loop.time(), group.next_event() - time.monotonic())
            if wait > 0:
                fut = loop.create_future()
                group.waiters.append(fut)
                handle = loop.call_later(wait, _wake, fut)
                try:
                    await fut
                finally:
                    handle.cancel()
                    if fut in group.waiters:
                        group.waiters.remove(fut)
            out = group.take(self, max_messages, self._lock)
            if out or loop.time() >= deadline:
                return out

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        group = self._g()
        for delivery in deliveries:
            group.settle(delivery.token)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        group = self._g()
        entry = group.settle(delivery.token)
        if entry is not None:
            group.enqueue(entry, time.monotonic() + delay if delay else 0.0)
            group.notify()

    async def reject(self, delivery: Delivery, reason: str) -> None:
        group = self._g()
        entry = group.settle(delivery.token)
        if entry is not None:
            group.destination.dead_letter(entry.message, reason, group.name)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        self._g().extend(delivery.token, seconds)

    async def close(self) -> None:
        if self._group is not None:
            self._group.release_owner(self)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class MemoryDriver(Driver):
    name = "memory"
    Options: ClassVar[type[BaseModel]] = MemoryOptions
    options: MemoryOptions

    def __init__(self, url: BrokerURL, options: MemoryOptions) -> None:
        super().__init__(url, options)
        name = url.host + url.path.strip("/")
        self.server = _SERVERS.setdefault(name, _Server(name))
        self._caps = Capabilities(
            backend="memory",
            persistence=native(note="kept in process memory until consumed; lost when the process exits"),
            fanout=native(),
            competing_consumers=native(),
            ordering="per_key",
            ordering_note="a key stays with one consumer of a group while its messages are in flight",
            delayed_delivery=native(),
            nack_delay=native(),
            dead_letter=native(note="<destination>.dlq, reason in x-unimq-dead-letter-reason"),
            priority=native(limit=255),
            message_ttl=native(),
            deduplication=native(note="by message_id, window set by ensure(deduplication=...)"),
            replay=none("a group sees messages published after it was created"),
            lock_extension=native(),
            peek=native(),
            batch_send=native(limit=10_000),
            headers=native(),
            transactions=none(),
            listing=native(),
            lock_timeout=native(note="per destination (ensure) or per consumer"),
            max_deliveries=emulated(note="counted by the memory broker, dead-lettered by the core on receipt"),
            dead_letter_expired=native(note="ensure(dead_letter_expired=True): an expired message is "
                                            "dead-lettered when a consumer of its group reaches it"),
            new_group_backlog=none("a group receives what is sent after it exists: ensure(groups=[...]) first"),
            max_message_bytes=options.max_message_bytes,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def native(self) -> Any:
        return self.server

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        self.server.destination(destination, self.options.auto_create).publish(messages)
        return [None] * len(messages)

    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        return MemorySubscription(self, destination, group, settings)

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:
        dest = self.server.destination(destination, True, spec)
        dest.spec = spec
        if spec.deduplication and dest.dedup is None:
            dest.dedup = DedupWindow(spec.deduplication.total_seconds())
        for group in spec.groups:
            dest.group(group)
        if spec.dead_letter:
            self.server.destination(self.dead_letter_destination(destination), True)

    async def peek(self, destination: str, count: int) -> list[Message]:
        group = self.server.destination(destination, False).group(None)
        group.maintain(time.monotonic())
        return group.head(count)

    async def stats(self, destination: str, group: str | None) -> Stats:
        dest = self.server.destination(destination, False)
        g = dest.groups.get(group or DEFAULT_GROUP)
        if g is None:
            raise NotFound(f"memory: destination {destination!r} has no group {group!r}")
        g.maintain(time.monotonic())
        dlq = self.server.destinations.get(self.dead_letter_destination(destination))
        return Stats(
            destination=destination, group=group, depth=g.depth(), in_flight=len(g.inflight),
            dead_letter_depth=dlq.group(None).depth() if dlq else 0,
            detail={"groups": sorted(n or "(default)" for n in dest.groups), "expired": g.expired},
        )

    async def destinations(self) -> list[str]:
        return sorted(self.server.destinations)

    async def delete(self, destination: str) -> None:
        for name in (destination, self.dead_letter_destination(destination)):
            dest = self.server.destinations.pop(name, None)
            if dest is not None:
                for group in dest.groups.values():
                    group.notify()

