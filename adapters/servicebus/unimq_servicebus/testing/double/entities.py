"""Queues, topics, subscriptions and dead-letter sub-queues: the broker state, with no networking.

Everything here runs on the reactor thread, so there is no locking. Time is passed in (``now``,
epoch milliseconds) so that the rules are easy to read and test: a lock expires when
``until_ms <= now``, a scheduled message becomes visible when ``scheduled_ms <= now``.

A receivable entity (a queue, a subscription or a dead-letter queue) is a :class:`Queue`:

* ``messages`` -- every message it holds, keyed by sequence number (so insertion order is
  sequence order, which is what peek needs);
* ``ready`` -- per session id (``None`` for entities without sessions), the sequence numbers that
  can be handed out now, in order; abandoned and released messages go back to their place in
  sequence order (as Service Bus keeps a session's order);
* ``locks`` -- lock token -> :class:`Lock` for messages delivered in peek-lock mode.

Consumers are objects supplied by the server (one per receiving AMQP link); the entity only asks
them for ``credit()`` and hands them encoded deliveries.

Session fidelity limits: a session released by its receiver's link closing, its connection
dropping or its session lock expiring returns its locked messages without counting a delivery
(whether Azure counts one then is not verified); ``acquire_session`` takes the first free session
in creation order, where Azure's choice is unspecified.
"""

from __future__ import annotations

import builtins
import heapq
import logging
import re
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from .codec import ACTIVE, DEFERRED, SCHEDULED, StoredMessage, message_fields, message_from_fields, now_ms
from .rules import DEFAULT_RULE, SqlFilter

log = logging.getLogger("unimq.servicebus_double")

# Error conditions, as the SDK maps them to exceptions (azure/servicebus/_common/constants.py).
MESSAGE_LOCK_LOST = "com.microsoft:message-lock-lost"
SESSION_LOCK_LOST = "com.microsoft:session-lock-lost"
MESSAGE_NOT_FOUND = "com.microsoft:message-not-found"
SESSION_CANNOT_BE_LOCKED = "com.microsoft:session-cannot-be-locked"
ENTITY_NOT_FOUND = "amqp:not-found"
ARGUMENT_ERROR = "com.microsoft:argument-error"
ENTITY_EXISTS = "com.microsoft:entity-already-exists"
TIMEOUT = "com.microsoft:timeout"

DEAD_LETTER_QUEUE = "$DeadLetterQueue"
SUBSCRIPTIONS = "Subscriptions"
#: Service Bus's longest rule name.
MAX_RULE_NAME = 50


class ServiceBusError(Exception):
    """An error the double reports to the client with an AMQP error condition."""

    def __init__(self, condition: str, description: str, status: int = 400):
        super().__init__(description)
        self.condition = condition
        self.description = description
        self.status = status


@dataclass
class EntityConfig:
    """Per-entity settings, with the defaults of a new Service Bus queue (minus duplicate detection)."""

    lock_duration: float = 30.0
    max_delivery_count: int = 10
    requires_session: bool = False
    duplicate_detection_window: float | None = None
    default_ttl: float | None = None
    dead_lettering_on_message_expiration: bool = False
    #: Seconds without activity after which the entity deletes itself (Service Bus: AutoDeleteOnIdle,
    #: at least 5 minutes there; the double takes any positive value so tests can be fast).
    auto_delete_on_idle: float | None = None

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def update(self, **options: Any) -> EntityConfig:
        unknown = set(options) - set(self.option_names())
        if unknown:
            raise ServiceBusError(ARGUMENT_ERROR, f"unknown entity option(s): {sorted(unknown)}")
        idle = options.get("auto_delete_on_idle")
        if idle is not None and not idle > 0:
            raise ServiceBusError(ARGUMENT_ERROR, f"auto_delete_on_idle must be positive seconds, not {idle!r}")
        for name, value in options.items():
            setattr(self, name, value)
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Lock:
    __slots__ = ("consumer", "message", "until_ms")

    def __init__(self, message: StoredMessage, until_ms: int, consumer: Any):
        self.message = message
        self.until_ms = until_ms
        self.consumer = consumer


class SessionLock:
    __slots__ = ("consumer", "until_ms")

    def __init__(self, consumer: Any, until_ms: int):
        self.consumer = consumer
        self.until_ms = until_ms


class _Dedup:
    """Message ids seen within the duplicate-detection window, oldest first."""

    def __init__(self, window_s: float):
        self.window_ms = int(window_s * 1000)
        self.seen_at: OrderedDict[str, int] = OrderedDict()

    def is_duplicate(self, message_id: str | None, now: int) -> bool:
        while self.seen_at:
            oldest_id, at = next(iter(self.seen_at.items()))
            if at + self.window_ms > now:
                break
            del self.seen_at[oldest_id]
        if message_id is None:
            return False
        if message_id in self.seen_at:
            return True
        self.seen_at[message_id] = now
        return False


def _dedup_for(config: EntityConfig, current: _Dedup | None) -> _Dedup | None:
    window = config.duplicate_detection_window
    if not window:
        return None
    if current is not None and current.window_ms == int(window * 1000):
        return current
    return _Dedup(window)


class Queue:
    """A queue, a topic subscription or a dead-letter sub-queue: anything a receiver can attach to."""

    kind = "queue"

    def __init__(self, name: str, config: EntityConfig, kind: str = "queue"):
        self.name = name
        self.kind = kind
        self.config = config
        self.dead_letter: Queue | None = None
        if kind != "deadletter":
            self.dead_letter = Queue(f"{name}/{DEAD_LETTER_QUEUE}", EntityConfig(
                lock_duration=config.lock_duration, max_delivery_count=2**31 - 1), kind="deadletter")
        self.messages: dict[int, StoredMessage] = {}
        self.ready: dict[str | None, deque[int]] = {}
        self.locks: dict[uuid.UUID, Lock] = {}
        self.consumers: list[Any] = []
        self.session_locks: dict[str, SessionLock] = {}
        self.session_state: dict[str, bytes | None] = {}
        self.session_waiters: list[tuple[Any, int, Callable[[str | None], None]]] = []
        self.counters = {"enqueued": 0, "delivered": 0, "completed": 0, "dead_lettered": 0,
                         "expired": 0, "duplicates": 0}
        self._lock_heap: list[tuple[int, uuid.UUID]] = []
        self._scheduled_heap: list[tuple[int, int]] = []
        self._next_seq = 1
        self._rr = 0
        self._dedup: _Dedup | None = _dedup_for(config, None)
        self.auto_created = False
        #: A subscription's rules (see :mod:`.rules`): a new one has the TrueFilter ``$Default``.
        self.rules: dict[str, SqlFilter] = {DEFAULT_RULE: SqlFilter(None)} if kind == "subscription" else {}
        #: Last activity (epoch ms) for auto_delete_on_idle; a restart starts the idle clock anew.
        self.active_ms = now_ms()

    # ------------------------------------------------------------- idleness

    def touch(self, now: int | None = None) -> None:
        """Record activity: a send, a receive, a settlement, a management operation, an update."""
        self.active_ms = now_ms() if now is None else now

    def idle_since(self, now: int) -> int:
        """When the entity last saw activity; ``now`` while a receiver link is open on it (or on its
        dead-letter queue) or a scheduled message waits in it: Service Bus does not count that as idle."""
        if self.consumers or self.session_waiters or any(
                seq in self.messages and self.messages[seq].state == SCHEDULED for _, seq in self._scheduled_heap):
            return now
        if self.dead_letter is not None:
            return max(self.active_ms, self.dead_letter.idle_since(now))
        return self.active_ms

    def idle_expired(self, now: int) -> bool:
        idle = self.config.auto_delete_on_idle
        return idle is not None and now - self.idle_since(now) >= idle * 1000

    # ----------------------------------------------------------------- intake

    def reconfigure(self, **options: Any) -> None:
        self.touch()
        self.config.update(**options)
        self._dedup = _dedup_for(self.config, self._dedup)
        if self.dead_letter is not None:
            self.dead_letter.config.lock_duration = self.config.lock_duration

    def accepts(self, message: StoredMessage) -> bool:
        """Whether a subscription's rules let the topic copy ``message`` into it (any rule matching)."""
        return any(rule.matches(message.app_properties) for rule in self.rules.values())

    def create_rule(self, name: str, sql: str | None) -> None:
        """Add a rule (``sql`` None: the TrueFilter); the same rule again is not an error here."""
        if not name or len(name) > MAX_RULE_NAME:
            raise ServiceBusError(ARGUMENT_ERROR, f"a rule name has 1 to {MAX_RULE_NAME} characters, not {name!r}")
        existing = self.rules.get(name)
        if existing is not None:
            if existing.sql == sql:
                return
            raise ServiceBusError(ENTITY_EXISTS, f"rule {name} of {self.name} exists with another filter", 409)
        try:
            self.rules[name] = SqlFilter(sql)
        except ValueError as exc:
            raise ServiceBusError(ARGUMENT_ERROR, str(exc)) from None
        self.touch()

    def delete_rule(self, name: str) -> None:
        if self.rules.pop(name, None) is None:
            raise ServiceBusError(ENTITY_NOT_FOUND, f"rule {name} of {self.name} does not exist", 404)
        self.touch()

    def check_sendable(self, message: StoredMessage) -> None:
        if self.config.requires_session and not message.session_id:
            raise ServiceBusError(ARGUMENT_ERROR, f"{self.name} requires sessions: set session_id")

    def enqueue(self, message: StoredMessage, now: int, dedup: bool = True) -> int | None:
        """Store a message; return its sequence number, or None when dropped as a duplicate."""
        if dedup and self._dedup is not None and self._dedup.is_duplicate(message.message_id, now):
            self.counters["duplicates"] += 1
            return None
        self.touch(now)
        message.seq = self._next_seq
        self._next_seq += 1
        message.enqueued_ms = now
        message.expires_ms = None
        if self.kind != "deadletter":  # dead-lettered messages never expire, as on Service Bus
            ttls = [t for t in (message.ttl_ms, _seconds_to_ms(self.config.default_ttl)) if t]
            if ttls:
                message.expires_ms = now + min(ttls)
        self.messages[message.seq] = message
        self.counters["enqueued"] += 1
        if message.scheduled_ms is not None and message.scheduled_ms > now:
            message.state = SCHEDULED
            heapq.heappush(self._scheduled_heap, (message.scheduled_ms, message.seq))
        else:
            message.state = ACTIVE
            self._ready_queue(message).append(message.seq)
            self._serve_session_waiters(now)
            self.pump(now)
        return message.seq

    def _ready_queue(self, message: StoredMessage) -> deque[int]:
        key = message.session_id if self.config.requires_session else None
        queue = self.ready.get(key)
        if queue is None:
            queue = self.ready[key] = deque()
        return queue

    # --------------------------------------------------------------- delivery

    def add_consumer(self, consumer: Any) -> None:
        self.touch()
        self.consumers.append(consumer)
        self.pump()

    def remove_consumer(self, consumer: Any) -> None:
        """A receiving link went away.

        Message locks outlive the link (as on Service Bus, they can still be settled through
        ``$management`` until they expire), except for sessions: closing a session receiver
        gives up the session, and its unsettled messages become available again.
        """
        self.touch()  # the idle time counts from the last receive, which an open receiver keeps doing
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        self.session_waiters = [w for w in self.session_waiters if w[0] is not consumer]
        sid = getattr(consumer, "session_id", None)
        if sid is not None and self.session_locks.get(sid) and self.session_locks[sid].consumer is consumer:
            del self.session_locks[sid]
            for token, lock in list(self.locks.items()):
                if lock.consumer is consumer:
                    del self.locks[token]
                    self._return(lock.message, failed=False)
            self._serve_session_waiters(now_ms())
            self.pump()

    def pump(self, now: int | None = None) -> None:
        """Hand ready messages to consumers, never beyond each consumer's link credit."""
        if not self.consumers:
            return
        now = now_ms() if now is None else now
        count = len(self.consumers)
        start = self._rr % count
        self._rr += 1
        for i in range(count):
            consumer = self.consumers[(start + i) % count]
            key = consumer.session_id if self.config.requires_session else None
            queue = self.ready.get(key)
            while queue and consumer.credit() > 0:
                message = self._pop_ready(queue, now)
                if message is not None:
                    self._deliver(consumer, message, now)
            consumer.after_pump()

    def _pop_ready(self, queue: deque[int], now: int) -> StoredMessage | None:
        message = self.messages.get(queue.popleft())
        if message is None or message.state != ACTIVE:
            return None
        if message.expires_ms is not None and message.expires_ms <= now:
            self._expire(message, now)
            return None
        return message

    def _deliver(self, consumer: Any, message: StoredMessage, now: int) -> None:
        self.touch(now)
        self.counters["delivered"] += 1
        if consumer.peek_lock:
            token = uuid.uuid4()
            until = now + int(self.config.lock_duration * 1000)
            self.locks[token] = Lock(message, until, consumer)
            if not self.config.requires_session:  # session messages are covered by the session lock
                heapq.heappush(self._lock_heap, (until, token))
            consumer.deliver(message.encode(token, until), token)
        else:
            del self.messages[message.seq]
            consumer.deliver(message.encode(), None)

    # ------------------------------------------------------------- settlement

    def settle(self, token: uuid.UUID, outcome: str, reason: str | None = None,
               description: str | None = None) -> None:
        """Apply complete / abandon / release / dead-letter / defer to a locked message."""
        lock = self.locks.pop(token, None)
        if lock is None:
            condition = SESSION_LOCK_LOST if self.config.requires_session else MESSAGE_LOCK_LOST
            raise ServiceBusError(condition, "The lock supplied is invalid. Either the lock expired, "
                                  "or the message has already been removed from the queue.", 410)
        message = lock.message
        now = now_ms()
        self.touch(now)
        if outcome == "complete":
            self._remove(message)
            self.counters["completed"] += 1
        elif outcome == "abandon":
            self._return(message, failed=True)
        elif outcome == "release":
            self._return(message, failed=False)
        elif outcome == "dead-letter":
            self._remove(message)
            self._dead_letter(message, reason, description, now)
        elif outcome == "defer":
            message.state = DEFERRED
        else:
            raise ValueError(outcome)
        self.pump(now)

    def _remove(self, message: StoredMessage) -> None:
        self.messages.pop(message.seq, None)

    def _return(self, message: StoredMessage, failed: bool) -> None:
        """Make a message receivable again; a failed attempt counts towards max delivery count."""
        if failed:
            message.delivery_count += 1
            if message.delivery_count >= self.config.max_delivery_count:
                self._remove(message)
                self._dead_letter(message, "MaxDeliveryCountExceeded",
                                  f"Message could not be consumed after {self.config.max_delivery_count} "
                                  "delivery attempts.", now_ms())
                return
        if message.state == ACTIVE and message.seq in self.messages:
            # Back at its place in sequence order (returned messages sit near the front).
            ready = self._ready_queue(message)
            index = next((i for i, seq in enumerate(ready) if seq > message.seq), len(ready))
            ready.insert(index, message.seq)

    def _dead_letter(self, message: StoredMessage, reason: str | None, description: str | None,
                     now: int) -> None:
        self.counters["dead_lettered"] += 1
        if self.dead_letter is None:
            return  # dead-lettering from a dead-letter queue just removes the message
        if reason is not None:
            message.set_application_property("DeadLetterReason", reason)
        if description is not None:
            message.set_application_property("DeadLetterErrorDescription", description)
        message.scheduled_ms = None
        self.dead_letter.enqueue(message, now, dedup=False)

    def _expire(self, message: StoredMessage, now: int) -> None:
        self._remove(message)
        self.counters["expired"] += 1
        if self.config.dead_lettering_on_message_expiration:
            self._dead_letter(message, "TTLExpiredException", "The message expired and was dead lettered.", now)

    def renew_locks(self, tokens: list[uuid.UUID], now: int) -> list[int]:
        expirations = []
        for token in tokens:
            lock = self.locks.get(token)
            if lock is None or lock.until_ms <= now:
                raise ServiceBusError(MESSAGE_LOCK_LOST, f"The lock {token} is invalid or expired.", 410)
            lock.until_ms = now + int(self.config.lock_duration * 1000)
            heapq.heappush(self._lock_heap, (lock.until_ms, token))
            expirations.append(lock.until_ms)
        return expirations

    # ----------------------------------------------------------- $management

    def peek(self, from_seq: int, count: int, session_id: str | None, now: int) -> list[bytes]:
        result: list[bytes] = []
        for seq, message in self.messages.items():
            if len(result) >= count:
                break
            if seq < from_seq or (session_id is not None and message.session_id != session_id):
                continue
            if message.state == ACTIVE and message.expires_ms is not None and message.expires_ms <= now:
                continue
            result.append(message.encode())
        return result

    def receive_deferred(self, seqs: list[int], peek_lock: bool, now: int) -> list[tuple[bytes, uuid.UUID | None]]:
        result: list[tuple[bytes, uuid.UUID | None]] = []
        for seq in seqs:
            message = self.messages.get(seq)
            if message is None or message.state != DEFERRED:
                raise ServiceBusError(MESSAGE_NOT_FOUND, f"Deferred message {seq} was not found.", 404)
            if peek_lock:
                token = uuid.uuid4()
                until = now + int(self.config.lock_duration * 1000)
                self.locks[token] = Lock(message, until, None)
                heapq.heappush(self._lock_heap, (until, token))
                result.append((message.encode(token, until), token))
            else:
                self._remove(message)
                result.append((message.encode(), None))
        return result

    def cancel_scheduled(self, seqs: list[int]) -> None:
        for seq in seqs:
            message = self.messages.get(seq)
            if message is None or message.state != SCHEDULED:
                raise ServiceBusError(MESSAGE_NOT_FOUND, f"Scheduled message {seq} was not found.", 404)
            self._remove(message)

    # --------------------------------------------------------------- sessions

    def acquire_session(self, consumer: Any, session_id: str | None, now: int) -> str | None:
        """Lock a session for ``consumer``: a given one, or (``None``) any unlocked one with messages.

        Returns the locked session id, or None when no session is available yet.
        """
        if session_id is None:
            session_id = next((sid for sid, queue in self.ready.items()
                               if queue and sid is not None and sid not in self.session_locks), None)
            if session_id is None:
                return None
        elif session_id in self.session_locks:
            raise ServiceBusError(SESSION_CANNOT_BE_LOCKED,
                                  f"The session {session_id} is locked by another receiver.", 409)
        self.session_locks[session_id] = SessionLock(consumer, now + int(self.config.lock_duration * 1000))
        consumer.session_id = session_id
        return session_id

    def wait_for_session(self, consumer: Any, deadline_ms: int, callback: Callable[[str | None], None]) -> None:
        self.session_waiters.append((consumer, deadline_ms, callback))

    def _serve_session_waiters(self, now: int) -> None:
        waiting = []
        for consumer, deadline, callback in self.session_waiters:
            sid = self.acquire_session(consumer, None, now)
            if sid is not None:
                callback(sid)
            elif deadline <= now:
                callback(None)
            else:
                waiting.append((consumer, deadline, callback))
        self.session_waiters = waiting

    def renew_session(self, session_id: str, now: int) -> int:
        lock = self.session_locks.get(session_id)
        if lock is None:
            raise ServiceBusError(SESSION_LOCK_LOST, f"The session lock for {session_id} was lost.", 410)
        lock.until_ms = now + int(self.config.lock_duration * 1000)
        return lock.until_ms

    def session_ids(self) -> list[str]:
        return sorted({m.session_id for m in self.messages.values() if m.session_id is not None})

    # ------------------------------------------------------------------ timers

    def tick(self, now: int) -> None:
        """Expire locks, release due scheduled messages, expire session locks."""
        changed = False
        while self._lock_heap and self._lock_heap[0][0] <= now:
            _, token = heapq.heappop(self._lock_heap)
            lock = self.locks.get(token)
            if lock is not None and lock.until_ms <= now:
                del self.locks[token]
                self._return(lock.message, failed=True)
                changed = True
        while self._scheduled_heap and self._scheduled_heap[0][0] <= now:
            _, seq = heapq.heappop(self._scheduled_heap)
            message = self.messages.get(seq)
            if message is not None and message.state == SCHEDULED:
                message.state = ACTIVE
                self._ready_queue(message).append(seq)
                changed = True
        for sid, session_lock in list(self.session_locks.items()):
            if session_lock.until_ms <= now:
                log.info("session lock on %s session %r expired", self.name, sid)
                self.remove_consumer(session_lock.consumer)
                session_lock.consumer.lose_session()
                changed = True
        if self.session_waiters:
            self._serve_session_waiters(now)
        if changed:
            self.pump(now)
        if self.dead_letter is not None:
            self.dead_letter.tick(now)

    def stats(self) -> dict[str, Any]:
        by_state = {"active": 0, "locked": 0, "scheduled": 0, "deferred": 0}
        locked = {id(lock.message) for lock in self.locks.values()}
        for message in self.messages.values():
            if id(message) in locked:
                by_state["locked"] += 1
            elif message.state == SCHEDULED:
                by_state["scheduled"] += 1
            elif message.state == DEFERRED:
                by_state["deferred"] += 1
            else:
                by_state["active"] += 1
        result = {"name": self.name, "kind": self.kind, "messages": len(self.messages), **by_state,
                  "consumers": len(self.consumers), "config": self.config.as_dict(), **self.counters}
        if self.dead_letter is not None:
            result["dead_letter_messages"] = len(self.dead_letter.messages)
        return result


    # ------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """Everything a restart keeps (see :mod:`.persistence`); locks and consumers are not kept."""
        return {
            "name": self.name, "kind": self.kind, "config": self.config.as_dict(),
            "messages": list(map(message_fields, self.messages.values())),
            "locked": sorted({lock.message.seq for lock in self.locks.values()}),
            "session_state": dict(self.session_state), "counters": dict(self.counters),
            "next_seq": self._next_seq, "auto_created": self.auto_created,
            "dedup": None if self._dedup is None else list(self._dedup.seen_at.items()),
            "dead_letter": None if self.dead_letter is None else self.dead_letter.snapshot(),
            "rules": {name: rule.sql for name, rule in self.rules.items()},
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Queue:
        """Rebuild from :meth:`snapshot`: a message that was locked counts as a lost lock
        (``delivery_count`` + 1, dead-lettered at the max) and is receivable again."""
        queue = cls(state["name"], EntityConfig(**state["config"]), kind=state["kind"])
        if state["dead_letter"] is not None:
            queue.dead_letter = cls.restore(state["dead_letter"])
        queue.session_state = state["session_state"]
        queue.counters.update(state["counters"])
        queue._next_seq = state["next_seq"]
        queue.auto_created = state["auto_created"]
        if "rules" in state:  # snapshots written before rules existed keep the default rule
            queue.rules = {name: SqlFilter(sql) for name, sql in state["rules"].items()}
        if queue._dedup is not None and state["dedup"]:
            queue._dedup.seen_at.update(state["dedup"])
        locked = set(state["locked"])
        for values in state["messages"]:
            message = message_from_fields(values)
            queue.messages[message.seq] = message
            if message.seq in locked:
                continue
            if message.state == SCHEDULED:
                heapq.heappush(queue._scheduled_heap, (int(message.scheduled_ms or 0), message.seq))
            elif message.state == ACTIVE:
                queue._ready_queue(message).append(message.seq)
        for seq in sorted(locked):  # back in sequence order, at the front
            queue._return(queue.messages[seq], failed=True)
        return queue


class Topic:
    """A topic: dedup and scheduling happen here; a due message is copied to every subscription."""

    kind = "topic"

    def __init__(self, name: str, config: EntityConfig):
        self.name = name
        self.config = config
        self.subscriptions: dict[str, Queue] = {}
        self.scheduled: dict[int, StoredMessage] = {}
        self.counters = {"enqueued": 0, "duplicates": 0}
        self._scheduled_heap: list[tuple[int, int]] = []
        self._next_seq = 1
        self._dedup = _dedup_for(config, None)
        self.auto_created = False
        self.active_ms = now_ms()

    def touch(self, now: int | None = None) -> None:
        self.active_ms = now_ms() if now is None else now

    def idle_since(self, now: int) -> int:
        """A topic is idle while it and its subscriptions are (no operations on them either)."""
        if self.scheduled:
            return now
        return max([self.active_ms, *(sub.idle_since(now) for sub in self.subscriptions.values())])

    def idle_expired(self, now: int) -> bool:
        idle = self.config.auto_delete_on_idle
        return idle is not None and now - self.idle_since(now) >= idle * 1000

    def reconfigure(self, **options: Any) -> None:
        self.touch()
        self.config.update(**options)
        self._dedup = _dedup_for(self.config, self._dedup)

    def check_sendable(self, message: StoredMessage) -> None:
        for sub in self.subscriptions.values():
            sub.check_sendable(message)

    def enqueue(self, message: StoredMessage, now: int, dedup: bool = True) -> int | None:
        if dedup and self._dedup is not None and self._dedup.is_duplicate(message.message_id, now):
            self.counters["duplicates"] += 1
            return None
        self.touch(now)
        seq = message.seq = self._next_seq
        self._next_seq += 1
        self.counters["enqueued"] += 1
        if message.scheduled_ms is not None and message.scheduled_ms > now:
            message.state = SCHEDULED
            message.enqueued_ms = now
            self.scheduled[seq] = message
            heapq.heappush(self._scheduled_heap, (message.scheduled_ms, seq))
        else:
            self._fan_out(message, now)
        return seq

    def _fan_out(self, message: StoredMessage, now: int) -> None:
        """A copy to each subscription whose rules match, now (when the message is sent, or due)."""
        for sub in self.subscriptions.values():
            if not sub.accepts(message):
                continue
            copy = message.copy()
            copy.scheduled_ms = None
            sub.enqueue(copy, now, dedup=False)

    def cancel_scheduled(self, seqs: list[int]) -> None:
        for seq in seqs:
            if self.scheduled.pop(seq, None) is None:
                raise ServiceBusError(MESSAGE_NOT_FOUND, f"Scheduled message {seq} was not found.", 404)

    def tick(self, now: int) -> None:
        while self._scheduled_heap and self._scheduled_heap[0][0] <= now:
            _, seq = heapq.heappop(self._scheduled_heap)
            message = self.scheduled.pop(seq, None)
            if message is not None:
                self._fan_out(message, now)
        for key, sub in list(self.subscriptions.items()):
            sub.tick(now)
            if sub.idle_expired(now):
                log.info("subscription %s idle for %gs: deleted (auto_delete_on_idle)",
                         sub.name, sub.config.auto_delete_on_idle)
                del self.subscriptions[key]

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "topic", "scheduled": len(self.scheduled),
                "subscriptions": sorted(s.name for s in self.subscriptions.values()),
                "config": self.config.as_dict(), **self.counters}


    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "config": self.config.as_dict(),
            "scheduled": list(map(message_fields, self.scheduled.values())), "counters": dict(self.counters),
            "next_seq": self._next_seq, "auto_created": self.auto_created,
            "dedup": None if self._dedup is None else list(self._dedup.seen_at.items()),
            "subscriptions": {key: sub.snapshot() for key, sub in self.subscriptions.items()},
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Topic:
        topic = cls(state["name"], EntityConfig(**state["config"]))
        topic.counters.update(state["counters"])
        topic._next_seq = state["next_seq"]
        topic.auto_created = state["auto_created"]
        if topic._dedup is not None and state["dedup"]:
            topic._dedup.seen_at.update(state["dedup"])
        for values in state["scheduled"]:
            message = message_from_fields(values)
            topic.scheduled[message.seq] = message
            heapq.heappush(topic._scheduled_heap, (int(message.scheduled_ms or 0), message.seq))
        topic.subscriptions = {key: Queue.restore(sub) for key, sub in state["subscriptions"].items()}
        return topic


Entity = Queue | Topic


def _seconds_to_ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def entity_path(address: str) -> str:
    """``amqp://host:5673/orders/$management`` -> ``orders/$management``; plain paths pass through."""
    if "://" in address:
        rest = address.split("://", 1)[1]
        address = rest.split("/", 1)[1] if "/" in rest else ""
    return address.strip("/")


class Broker:
    """The namespace: named entities, created on first use or declared up front."""

    def __init__(self, defaults: dict[str, Any] | None = None, static: bool = False):
        self.defaults = EntityConfig().update(**(defaults or {}))
        #: Static mode (the official emulator's constraints): no entity is created on first use.
        self.static = static
        self.entities: dict[str, Entity] = {}
        # Options declared for entities that do not exist yet: key -> (kind or None, options).
        self.declared: dict[str, tuple[str | None, dict[str, Any]]] = {}

    # -------------------------------------------------------------- creation

    def _config(self, key: str) -> EntityConfig:
        options = self.declared.get(key, (None, {}))[1]
        return EntityConfig(**self.defaults.as_dict()).update(**options)

    def create_queue(self, name: str, **options: Any) -> Queue:
        key = name.lower()
        existing = self.entities.get(key)
        if isinstance(existing, Queue):
            existing.reconfigure(**options)
            return existing
        if isinstance(existing, Topic):
            raise ServiceBusError(ENTITY_EXISTS, f"{name} is a topic", 409)
        queue = Queue(name, self._config(key).update(**options))
        self.entities[key] = queue
        return queue

    def create_topic(self, name: str, **options: Any) -> Topic:
        key = name.lower()
        existing = self.entities.get(key)
        if isinstance(existing, Topic):
            existing.reconfigure(**options)
            return existing
        if isinstance(existing, Queue):
            if not existing.auto_created:
                raise ServiceBusError(ENTITY_EXISTS, f"{name} is a queue", 409)
            log.warning("auto-created queue %s becomes a topic; its %d message(s) are dropped",
                        name, len(existing.messages))
        topic = Topic(name, self._config(key).update(**options))
        self.entities[key] = topic
        return topic

    def create_subscription(self, topic_name: str, name: str, **options: Any) -> Queue:
        topic = self.entities.get(topic_name.lower())
        if not isinstance(topic, Topic):
            topic = self.create_topic(topic_name)
            topic.auto_created = True
        existing = topic.subscriptions.get(name.lower())
        if existing is not None:
            existing.reconfigure(**options)
            return existing
        key = f"{topic_name}/{SUBSCRIPTIONS}/{name}".lower()
        sub = Queue(f"{topic.name}/{SUBSCRIPTIONS}/{name}", self._config(key).update(**options), kind="subscription")
        topic.subscriptions[name.lower()] = sub
        return sub

    def configure_entity(self, name: str, kind: str | None = None, **options: Any) -> dict[str, Any]:
        """Set options on an entity, now if it exists, otherwise when it is created (or now if ``kind``)."""
        EntityConfig().update(**options)  # validate option names early
        parts = entity_path(name).split("/")
        if len(parts) == 3 and parts[1].lower() == SUBSCRIPTIONS.lower():
            kind = "subscription"
        key = "/".join(parts).lower()
        previous = self.declared.get(key, (None, {}))[1]
        self.declared[key] = (kind, {**previous, **options})
        if kind == "subscription":
            return self.create_subscription(parts[0], parts[2], **options).stats()
        existing = self.entities.get(key)
        if existing is not None:
            existing.reconfigure(**options)
            return existing.stats()
        if kind == "topic":
            return self.create_topic(name, **options).stats()
        if kind == "queue":
            return self.create_queue(name, **options).stats()
        return {"name": name, "kind": kind, "declared": True, "config": self._config(key).as_dict()}

    def delete(self, name: str) -> None:
        parts = entity_path(name).split("/")
        self.declared.pop("/".join(parts).lower(), None)
        if len(parts) == 3 and parts[1].lower() == SUBSCRIPTIONS.lower():
            topic = self.entities.get(parts[0].lower())
            if isinstance(topic, Topic) and topic.subscriptions.pop(parts[2].lower(), None) is not None:
                return
        elif self.entities.pop(parts[0].lower(), None) is not None:
            return
        raise ServiceBusError(ENTITY_NOT_FOUND, f"entity {name} does not exist", 404)

    # ------------------------------------------------------------ resolution

    def _missing(self, name: str) -> ServiceBusError:
        return ServiceBusError(ENTITY_NOT_FOUND, f"The messaging entity '{name}' could not be found "
                               "(static mode: entities come from the config file only)", 404)

    def _auto_queue(self, name: str) -> Entity:
        key = name.lower()
        entity = self.entities.get(key)
        if entity is None:
            if self.static:
                raise self._missing(name)
            kind = self.declared.get(key, (None, {}))[0]
            entity = self.create_topic(name) if kind == "topic" else self.create_queue(name)
            entity.auto_created = True
            log.info("auto-created %s %s", entity.kind, name)
        return entity

    def for_send(self, address: str) -> Entity:
        """The queue or topic a sender link targets (a new queue when the name is unknown)."""
        parts = entity_path(address).split("/")
        if len(parts) != 1 or not parts[0]:
            raise ServiceBusError(ENTITY_NOT_FOUND, f"cannot send to {address!r}", 404)
        return self._auto_queue(parts[0])

    def for_receive(self, address: str) -> Queue:
        """The queue, subscription or dead-letter queue a receiver link sources from."""
        parts = entity_path(address).split("/")
        dead_letter = parts[-1].lower() == DEAD_LETTER_QUEUE.lower()
        if dead_letter:
            parts = parts[:-1]
        if len(parts) == 3 and parts[1].lower() == SUBSCRIPTIONS.lower():
            topic = self.entities.get(parts[0].lower())
            known = topic.subscriptions.get(parts[2].lower()) if isinstance(topic, Topic) else None
            if known is None and self.static:
                raise self._missing("/".join(parts))
            if not isinstance(topic, Topic):
                topic = self.create_topic(parts[0])
                topic.auto_created = True
            queue = known or self.create_subscription(parts[0], parts[2])
        elif len(parts) == 1 and parts[0]:
            entity = self._auto_queue(parts[0])
            if not isinstance(entity, Queue):
                raise ServiceBusError(ENTITY_NOT_FOUND, f"{parts[0]} is a topic; receive from a subscription", 404)
            queue = entity
        else:
            raise ServiceBusError(ENTITY_NOT_FOUND, f"cannot receive from {address!r}", 404)
        if dead_letter:
            assert queue.dead_letter is not None
            return queue.dead_letter
        return queue

    def for_management(self, address: str) -> Entity:
        """The entity behind ``<entity>/$management`` (a topic for a sender's schedule calls)."""
        path = entity_path(address)
        path = path[: -len("/$management")] if path.lower().endswith("/$management") else path
        parts = path.split("/")
        if len(parts) == 1:
            return self._auto_queue(parts[0])
        return self.for_receive(path)

    def subscription(self, path: str) -> Queue:
        """The existing subscription ``<topic>/Subscriptions/<name>`` (never created here)."""
        parts = entity_path(path).split("/")
        topic = self.entities.get(parts[0].lower())
        found = topic.subscriptions.get(parts[2].lower()) if (
            isinstance(topic, Topic) and len(parts) == 3 and parts[1].lower() == SUBSCRIPTIONS.lower()) else None
        if found is None:
            raise ServiceBusError(ENTITY_NOT_FOUND, f"subscription {path} does not exist", 404)
        return found

    def list(self) -> builtins.list[dict[str, Any]]:
        result = []
        for entity in self.entities.values():
            result.append({"name": entity.name, "kind": entity.kind})
            if isinstance(entity, Topic):
                result.extend({"name": s.name, "kind": "subscription"} for s in entity.subscriptions.values())
        return result

    def stats(self, name: str) -> dict[str, Any]:
        parts = entity_path(name).split("/")
        try:
            if len(parts) == 1:
                entity = self.entities[parts[0].lower()]
            else:
                entity = self.entities[parts[0].lower()]
                dead_letter = parts[-1].lower() == DEAD_LETTER_QUEUE.lower()
                if len(parts) >= 3 and isinstance(entity, Topic):
                    entity = entity.subscriptions[parts[2].lower()]
                if dead_letter and isinstance(entity, Queue) and entity.dead_letter is not None:
                    entity = entity.dead_letter
        except KeyError:
            raise ServiceBusError(ENTITY_NOT_FOUND, f"entity {name} does not exist", 404) from None
        return entity.stats()

    def tick(self, now: int) -> None:
        for key, entity in list(self.entities.items()):
            entity.tick(now)
            if entity.idle_expired(now):
                log.info("%s %s idle for %gs: deleted (auto_delete_on_idle)",
                         entity.kind, entity.name, entity.config.auto_delete_on_idle)
                del self.entities[key]
                self.declared.pop(key, None)

    def load_config(self, document: dict[str, Any]) -> None:
        """Apply a JSON config document: the double's own format, or the official emulator's
        ``Config.json`` (``{"UserConfig": {"Namespaces": [...]}}``); see docs/servicebus-double.md."""
        if "UserConfig" in document:
            document = emulator_config(document)
        if "defaults" in document:
            self.defaults.update(**document["defaults"])
        for name, options in (document.get("queues") or {}).items():
            self.configure_entity(name, kind="queue", **(options or {}))
        for name, declared in (document.get("topics") or {}).items():
            options = dict(declared or {})
            subscriptions = options.pop("subscriptions", {}) or {}
            self.configure_entity(name, kind="topic", **options)
            for sub, sub_options in subscriptions.items():
                self.create_subscription(name, sub, **(sub_options or {}))

    def snapshot(self) -> dict[str, Any]:
        """The namespace's durable state: entities with their messages, and declared options."""
        return {"declared": dict(self.declared),
                "entities": {key: entity.snapshot() for key, entity in self.entities.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` over this namespace (its entities win over a config file's)."""
        self.declared.update(state["declared"])
        for key, entity in state["entities"].items():
            self.entities[key] = Topic.restore(entity) if entity["kind"] == "topic" else Queue.restore(entity)


_DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")
#: The emulator's "never" TimeSpan.MaxValue, and anything longer than this, means no TTL (no auto-delete).
_NO_TTL = 10 * 365 * 86400.0


def iso_seconds(text: str) -> float:
    """An ISO 8601 duration as the emulator's config writes them (``PT30S``, ``PT1H``, ``P14D``)."""
    found = _DURATION.match(text.strip())
    if found is None or text.strip() in ("P", "PT"):
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    parts = {k: float(v) if v else 0.0 for k, v in found.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


def _entity_options(properties: dict[str, Any], where: str) -> dict[str, Any]:
    """The double's options for one entity of the emulator's config (keys it does not model are refused
    when set to something the double would silently get wrong)."""
    options: dict[str, Any] = {}
    for key, value in properties.items():
        if key == "LockDuration":
            options["lock_duration"] = iso_seconds(value)
        elif key == "MaxDeliveryCount":
            options["max_delivery_count"] = int(value)
        elif key == "RequiresSession":
            options["requires_session"] = bool(value)
        elif key == "DeadLetteringOnMessageExpiration":
            options["dead_lettering_on_message_expiration"] = bool(value)
        elif key == "DefaultMessageTimeToLive":
            ttl = iso_seconds(value)
            options["default_ttl"] = None if ttl >= _NO_TTL else ttl
        elif key == "AutoDeleteOnIdle":
            idle = iso_seconds(value)
            options["auto_delete_on_idle"] = None if idle >= _NO_TTL else idle
        elif key in ("RequiresDuplicateDetection", "DuplicateDetectionHistoryTimeWindow"):
            continue  # read together below
        elif key in ("ForwardTo", "ForwardDeadLetteredMessagesTo"):
            if value:
                raise ValueError(f"{where}: {key} is not supported by the double")
        else:
            raise ValueError(f"{where}: unknown property {key!r}")
    if properties.get("RequiresDuplicateDetection"):
        options["duplicate_detection_window"] = iso_seconds(properties.get("DuplicateDetectionHistoryTimeWindow",
                                                                           "PT10M"))
    return options


def emulator_config(document: dict[str, Any]) -> dict[str, Any]:
    """The official emulator's ``Config.json`` in the double's own format (one namespace)."""
    namespaces = document["UserConfig"].get("Namespaces") or []
    if len(namespaces) != 1:
        raise ValueError(f"the emulator config declares {len(namespaces)} namespaces; the double serves exactly one")
    namespace = namespaces[0]
    queues = {q["Name"]: _entity_options(q.get("Properties") or {}, q["Name"]) for q in namespace.get("Queues") or []}
    topics: dict[str, Any] = {}
    for topic in namespace.get("Topics") or []:
        options = _entity_options(topic.get("Properties") or {}, topic["Name"])
        subscriptions = {}
        for sub in topic.get("Subscriptions") or []:
            where = f"{topic['Name']}/Subscriptions/{sub['Name']}"
            if sub.get("Rules"):
                raise ValueError(f"{where}: Rules in a config file are not read by the double (its control "
                                 "node manages rules: docs/servicebus-double.md)")
            subscriptions[sub["Name"]] = _entity_options(sub.get("Properties") or {}, where)
        topics[topic["Name"]] = {**options, "subscriptions": subscriptions}
    return {"queues": queues, "topics": topics}
