"""Receiving from a session entity: several sessions per consumer, each read in order.

Sessions are accepted with ``NEXT_AVAILABLE_SESSION`` receivers, each opened in a task of its own
(the service holds the attach until a session with messages is free, ``ACCEPT_WAIT`` at most),
while the consumer holds fewer than ``max_sessions``: one accept at a time while none is free, up
to ``MAX_ACCEPTING`` at once after one succeeded (every receiver opens a connection of its own,
~0.5 s of round trips with the SDK, so a backlog of sessions is taken up in parallel). Each held session has its own
receiver, which gets its messages in order; the service gives that session to no other consumer
until this one releases it. A session that has had no message for ``session_idle`` seconds and has
nothing unsettled is closed, so that the next one can be accepted.

Locks: the messages of a session share the session lock. The keeper task renews it while no
message of the session has been held longer than the lock timeout (the consumer's lock_timeout,
else the entity's lock duration as the session lock shows it); ``extend()`` renews it at once and
gives its message the time asked. A message held past its time gives the session up, as a message
lock would expire: the session's unsettled messages are abandoned, last first so that they come
back in order with the next attempt, and its receiver is closed.

Failures follow subscription.py: calls on a receiver go one at a time; the first failure marks the
session broken, later settlements on it are skipped (its messages come back when the service
releases the session), and its receiver is closed, never reopened in place: the next accept takes
whichever session is free. A session whose connection drops is let go at once (subscription.py's
``watch_connection``), and in peek-lock mode so is every delivery of a session let go that was not
yet handed to the application, here and in the core's buffer: the service gives them again with
the session, so handing them out too would have them processed twice. While a session has
unsettled messages its receiver reads with a short socket timeout (subscription.py's ``ReadPace``),
so that a settlement does not wait 0.2 s behind the session's receive poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusReceiver
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    OperationTimeoutError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from unimq.driver import Subscription
from unimq.errors import CapabilityError, ConfigError, ConnectionError, NotFound, Timeout
from unimq.message import Delivery
from unimq_servicebus.mapping import attempt_of, dead_letter_fields, entity_path, to_message
from unimq_servicebus.options import DEFAULT_MAX_SESSIONS
from unimq_servicebus.subscription import ReadPace, watch_connection

if TYPE_CHECKING:
    from unimq_servicebus.driver import ServiceBusDriver

log = logging.getLogger("unimq.servicebus")

#: Seconds the service may hold an accept while no session is free; then the next accept starts.
ACCEPT_WAIT = 5.0
#: Accepts in flight at once while sessions are free.
MAX_ACCEPTING = 4
#: No session was free, or another receiver took it first: not an error, accept again.
NO_SESSION = (OperationTimeoutError, SessionCannotBeLockedError)
#: The session (or the message's lock with it) is gone: the service releases its messages.
LOST = (SessionLockLostError, MessageLockLostError, MessageAlreadySettled)
#: How often the keeper looks at the held sessions.
KEEP_EVERY = 0.25
#: Renew a session lock when less than this many seconds of it are left (less for short locks).
RENEW_MARGIN = 2.0
#: Longest wait for a call in flight on a receiver before it is closed anyway.
CLOSE_WAIT = 10.0
#: Session lock assumed when the service did not say (Service Bus's default lock duration).
DEFAULT_LOCK = 30.0


@dataclass(eq=False)
class _Session:
    """One held session: its receiver, its messages not yet settled, and when it last had one."""

    receiver: ServiceBusReceiver
    session_id: str
    #: Seconds one session lock lasts (the entity's lock duration).
    duration: float
    active: float
    unsettled: dict[int, tuple[ServiceBusReceivedMessage, float]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: asyncio.Task[list[ServiceBusReceivedMessage]] | None = None
    broken: bool = False
    closed: bool = False

    def lock_left(self) -> float:
        until = self.receiver.session.locked_until_utc
        return (until - datetime.now(UTC)).total_seconds() if until else self.duration


class SessionSubscription(Subscription):
    #: Service Bus dead-letters natively (DeadLetterReason / DeadLetterErrorDescription).
    native_reject: ClassVar[bool] = True

    def __init__(self, driver: ServiceBusDriver, destination: str, group: str | None, prefetch: int,
                 lock_timeout: float | None) -> None:
        options = driver.options
        self._driver = driver
        self._destination = destination
        self._group = group
        self._max_sessions = options.max_sessions or min(prefetch, DEFAULT_MAX_SESSIONS)
        self._prefetch = max(1, prefetch // self._max_sessions)
        self._peek_lock = options.receive_mode == "peek_lock"
        self._lock_timeout = lock_timeout
        self._hold = options.lock_renewal
        self._idle = options.session_idle
        self._default_session = options.default_session_id or None
        self._sessions: list[_Session] = []
        self._accepting: set[asyncio.Task[None]] = set()
        self._free = False  # the last accept found a session: accept several at once
        self._backlog: deque[Delivery] = deque()
        self._keeper: asyncio.Task[None] | None = None
        self._held: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        #: One task per session receiver that ends when its connection does (subscription.py).
        self._watches: set[asyncio.Task[None]] = set()
        #: Short socket reads on a session's receiver while it has unsettled messages (subscription.py).
        self._pace = ReadPace()

    async def open(self) -> None:
        if self._group is None and await self._driver.entity_kind(self._destination) == "topic":
            raise ConfigError(f"servicebus: {self._destination!r} is a topic; consume it with group=<subscription>")
        self._start_accepting()
        self._keeper = asyncio.ensure_future(self._keep())

    # Accepting sessions

    def _start_accepting(self) -> None:
        wanted = min(self._max_sessions - len(self._sessions), MAX_ACCEPTING if self._free else 1)
        while len(self._accepting) < wanted:
            self._accepting.add(asyncio.ensure_future(self._accept()))

    async def _accept(self) -> None:
        """Open a receiver on the next free session and hold it (raises NO_SESSION when none was free)."""
        client = self._driver.session_client()
        common: dict[str, Any] = {
            "session_id": NEXT_AVAILABLE_SESSION, "max_wait_time": ACCEPT_WAIT, "prefetch_count": self._prefetch,
            "receive_mode": (ServiceBusReceiveMode.PEEK_LOCK if self._peek_lock
                             else ServiceBusReceiveMode.RECEIVE_AND_DELETE),
        }
        receiver = (client.get_subscription_receiver(self._destination, self._group, **common)
                    if self._group is not None else client.get_queue_receiver(self._destination, **common))
        try:
            await self._driver.bounded(receiver.__aenter__(), f"accepting a session of {self._destination!r}")
        except Timeout:
            self._driver.close_later(receiver)
            raise OperationTimeoutError(message="no session was granted in time") from None
        except BaseException:
            self._driver.close_later(receiver)
            raise
        session = receiver.session
        if not isinstance(session.session_id, str):  # attached without a session (a refusal)
            self._driver.close_later(receiver)
            raise OperationTimeoutError(message="no session was granted")
        until = session.locked_until_utc
        duration = (until - datetime.now(UTC)).total_seconds() if until else DEFAULT_LOCK
        held = _Session(receiver, session.session_id, max(duration, 1.0), time.monotonic())
        self._sessions.append(held)
        self._pace.add(receiver)
        watch_connection(receiver, functools.partial(self._dropped, held), self._watches)

    def _dropped(self, s: _Session) -> None:
        """The session's connection is gone (unless it was closed on purpose): let it go now."""
        if not s.closed:
            s.broken = True
            self._close(s)

    def _accepted(self, task: asyncio.Task[None]) -> None:
        """An accept task ended: a failure other than 'no session was free' is the caller's."""
        self._accepting.discard(task)
        if task.cancelled():  # the consumer is closing
            return
        failure = task.exception()
        self._free = failure is None
        if failure is None or isinstance(failure, NO_SESSION):
            return
        if _sessions_refused(failure):
            entity = entity_path(self._destination, self._group)
            raise ConfigError(f"servicebus: {entity!r} does not require sessions, so it cannot be read as a "
                              "session entity: drop the URL option sessions=true for it, or use an entity "
                              "created with requires_session") from failure
        mapped = self._driver.map_error(failure, f"accept a session of {self._destination}")
        if isinstance(mapped, NotFound | ConfigError):
            raise mapped from failure
        raise ConnectionError(f"servicebus: accepting a session of {self._destination!r} failed; "
                              f"it will be tried again: {mapped}") from failure

    # Receiving

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        out = self._take(max_messages)
        if out:
            return out
        await self._release_idle()
        wait = max(timeout, 0.01)
        deadline = time.monotonic() + wait
        while not self._backlog:
            self._start_accepting()
            live = [s for s in self._sessions if not s.broken and not s.closed]
            share = max(1, -(-max_messages // max(1, len(live))))
            for s in live:
                self._pace.set(bool(s.unsettled) or s.lock.locked(), s.receiver)
                if s.pending is None:
                    s.pending = asyncio.ensure_future(
                        s.receiver.receive_messages(max_message_count=share, max_wait_time=wait))
            tasks: list[asyncio.Future[Any]] = [s.pending for s in live if s.pending is not None]
            tasks += self._accepting
            left = deadline - time.monotonic()
            if not tasks or left <= 0:
                break
            done, _ = await asyncio.wait(tasks, timeout=left + 0.5, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            failure = self._collect(live, done)
            for s in live:
                self._pace.set(bool(s.unsettled) or s.lock.locked(), s.receiver)
            for task in [t for t in self._accepting if t in done]:
                self._accepted(task)
            if failure is not None and not self._backlog:
                raise failure
        return self._take(max_messages)

    def _take(self, max_messages: int) -> list[Delivery]:
        backlog = self._backlog
        return [backlog.popleft() for _ in range(min(max_messages, len(backlog)))]

    def _collect(self, live: list[_Session], done: set[asyncio.Future[Any]]) -> BaseException | None:
        """Take the batches of the receives that finished; the first failure to report, if any."""
        failure: BaseException | None = None
        for s in live:
            task = s.pending
            if task is None or task not in done:
                continue
            s.pending = None
            if task.cancelled():
                s.broken = True  # cancelled by a close: nothing to take
                continue
            error = task.exception()
            if error is None:
                self._add(s, task.result())
                continue
            s.broken = True  # no settlement may reopen it; released at the next receive
            if isinstance(error, (*LOST, *NO_SESSION)):
                continue  # the service released the session (or never granted it): its messages come back
            mapped = self._driver.map_error(error, f"receive from {self._destination}")
            if isinstance(mapped, NotFound | ConfigError):
                return mapped
            failure = failure or ConnectionError(f"servicebus: receiving from session {s.session_id!r} of "
                                                 f"{self._destination!r} failed; the session will be given "
                                                 f"up and accepted again: {mapped}")
        return failure

    def _add(self, s: _Session, batch: list[ServiceBusReceivedMessage]) -> None:
        if not batch or (self._peek_lock and (s.broken or s.closed)):
            return  # locked to a session that is gone: they come back with it
        now = time.monotonic()
        s.active = now
        held_until = now + max(self._lock_timeout or s.duration, self._hold)
        append = self._backlog.append
        for received in batch:
            if self._peek_lock:
                s.unsettled[id(received)] = (received, held_until)
            append(Delivery(to_message(received, False, self._default_session), attempt_of(received), received, s))

    # Releasing sessions

    async def _release_idle(self) -> None:
        """Close broken sessions, and idle ones (nothing unsettled, no message for session_idle)."""
        now = time.monotonic()
        for s in list(self._sessions):
            if s.broken:
                self._close(s)
            elif not s.unsettled and now - s.active >= self._idle:
                task = s.pending
                if task is not None and task.done() and task.exception() is None and task.result():
                    s.pending = None
                    self._add(s, task.result())  # a batch arrived meanwhile: keep the session
                else:
                    self._close(s)

    def _close(self, s: _Session) -> None:
        """Let the session go: the service releases it and the messages it holds for it once its
        receiver is closed (in the background: an SDK close takes about a second); settling them
        from now on is a no-op."""
        if s.closed:
            return
        s.closed = True
        self._pace.discard(s.receiver)
        with contextlib.suppress(ValueError):
            self._sessions.remove(s)
        s.unsettled.clear()
        if self._peek_lock:  # the service gives them again with the session (received-and-deleted ones: never)
            if any(d.token is s for d in self._backlog):
                self._backlog = deque(d for d in self._backlog if d.token is not s)
            self.discard_unread(lambda d: d.token is s)
        task = asyncio.ensure_future(self._shut(s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _shut(self, s: _Session) -> None:
        """Close the receiver once no call runs on it."""
        task, s.pending = s.pending, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        acquired = True
        try:
            await asyncio.wait_for(s.lock.acquire(), CLOSE_WAIT)
        except TimeoutError:
            acquired = False  # a call hangs: close under it rather than keep the consumer waiting
        self._driver.close_later(s.receiver)  # the session is released once its link detaches
        if acquired:
            s.lock.release()

    async def _give_up(self, s: _Session) -> None:
        """Abandon the session's unsettled messages, last first (they come back in order, next
        attempt), then close it."""
        held = [received for received, _ in s.unsettled.values()]
        s.unsettled.clear()
        for received in reversed(held):
            with contextlib.suppress(Exception):
                await self._call(s, functools.partial(s.receiver.abandon_message, received))
        self._close(s)

    async def _keep(self) -> None:
        """Between receives too: take finished batches, renew the locks of held sessions, give up
        those with a message held too long, and close idle ones."""
        while True:
            await asyncio.sleep(KEEP_EVERY)
            try:
                await self._keep_once()
            except Exception:  # never let the keeper die: without it session locks lapse
                log.warning("servicebus: keeping the sessions of %r failed", self._destination, exc_info=True)

    async def _keep_once(self) -> None:
        now = time.monotonic()
        for s in list(self._sessions):
            if s.pending is not None and s.pending.done():
                self._collect([s], {s.pending})  # a failure marks it broken; receive() reports it
            if s.broken or s.closed:
                continue
            if any(until <= now for _, until in s.unsettled.values()):
                await self._give_up(s)
            elif not s.unsettled and s.pending is None and now - s.active >= self._idle:
                self._close(s)
            elif s.lock_left() < min(RENEW_MARGIN, s.duration / 2):
                with contextlib.suppress(Exception):  # a failure marks it broken: released later
                    await self._call(s, s.receiver.session.renew_lock)

    async def _call(self, s: _Session, call: Callable[[], Awaitable[object]]) -> bool:
        """Run one settlement or renewal on the session's receiver: one at a time, never on a
        broken or closed one (the call would reopen it). False when skipped or the lock is gone."""
        async with s.lock:
            if s.broken or s.closed:
                return False
            try:
                await self._driver.bounded(call(), f"settling or renewing in session {s.session_id!r} of "
                                                   f"{self._destination!r}")
            except LOST:
                s.broken = True  # the session is gone: its messages come back to whoever takes it
                return False
            except Exception:
                s.broken = True
                raise
        return True

    # Settling

    async def _settle(self, delivery: Delivery, action: Callable[[ServiceBusReceivedMessage], Awaitable[None]]) -> None:
        s: _Session = delivery.token
        received: ServiceBusReceivedMessage = delivery.native
        if s.unsettled.pop(id(received), None) is None:
            return  # settled already, or the session was released
        await self._call(s, functools.partial(action, received))

    async def ack(self, delivery: Delivery) -> None:
        if self._peek_lock:
            await self._settle(delivery, delivery.token.receiver.complete_message)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One after another: concurrent settlements on one receiver stall (module docstring)."""
        for delivery in deliveries:
            await self.ack(delivery)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        if not self._peek_lock:
            raise CapabilityError("servicebus cannot nack with receive_mode=receive_and_delete: the message was "
                                  "removed when it was received")
        s: _Session = delivery.token
        if not delay:
            await self._settle(delivery, s.receiver.abandon_message)
            return
        received: ServiceBusReceivedMessage = delivery.native
        if id(received) in s.unsettled:  # held (the session lock renewed) until abandoned
            s.unsettled[id(received)] = (received, time.monotonic() + delay + s.duration)
        task = asyncio.ensure_future(self._abandon_later(delivery, delay))
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def _abandon_later(self, delivery: Delivery, delay: float) -> None:
        """The emulated delayed nack: the keeper renews the session lock meanwhile."""
        await asyncio.sleep(delay)
        with contextlib.suppress(Exception):  # a failed abandon leaves the message to the session's release
            await self._settle(delivery, delivery.token.receiver.abandon_message)

    async def reject(self, delivery: Delivery, reason: str) -> None:
        if not self._peek_lock:
            raise CapabilityError("servicebus cannot reject with receive_mode=receive_and_delete")
        short, description = dead_letter_fields(reason)
        receiver: ServiceBusReceiver = delivery.token.receiver

        async def dead_letter(received: ServiceBusReceivedMessage) -> None:
            await receiver.dead_letter_message(received, reason=short, error_description=description)

        await self._settle(delivery, dead_letter)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        """Give the message ``seconds`` more (at least a lock duration) and renew the session lock now."""
        s: _Session = delivery.token
        received: ServiceBusReceivedMessage = delivery.native
        if id(received) not in s.unsettled:
            return
        s.unsettled[id(received)] = (received, time.monotonic() + max(seconds, self._lock_timeout or s.duration))
        await self._call(s, s.receiver.session.renew_lock)

    async def close(self) -> None:
        stopping = [t for t in (self._keeper, *self._accepting, *self._held) if t is not None]
        for task in stopping:
            task.cancel()
        await asyncio.gather(*stopping, return_exceptions=True)
        self._keeper = None
        self._accepting.clear()
        self._backlog.clear()
        await asyncio.gather(*(self._give_up(s) for s in list(self._sessions)))
        await asyncio.gather(*list(self._closing), return_exceptions=True)


def _sessions_refused(failure: BaseException) -> bool:
    """A session receiver refused because the entity has no sessions (the service's words, or the double's)."""
    text = str(failure).lower()
    return "session" in text and ("requires_session is false" in text or "does not require" in text)
