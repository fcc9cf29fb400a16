"""Receiving: one ServiceBusReceiver per consumer (several when reading a topic's dead letters).

Each receiver's ``receive_messages`` runs in a task of its own, so a cancelled ``receive()``
never drops a batch: what arrives afterwards is returned by the next call, and on close every
message received but not settled is abandoned (it comes back with the next attempt at once,
instead of after its lock expires).

Settlements and lock renewals go one at a time per receiver, ``ack_many`` included: the SDK's
reads and writes share one lock, and a settlement waiting for its outcome reads while holding it,
so concurrent settlements stall for the socket timeout (0.2 s) once the last outcome has been read
(10 concurrent completes: ~200 ms, one after another: ~5 ms).

A settlement waits for its outcome by reading the socket, as a receive poll on the same receiver
does for up to a second: the poll usually reads the outcome, and the settlement's own read then
runs out the SDK's socket timeout (0.2 s) before it looks again. One after another, ten acks
took 2 s, past a 2 s lock (their messages came again). :class:`ReadPace` shortens that timeout
on the receivers' connections while the consumer holds unsettled messages (20 ms: an idle poll
keeps 0.2 s, about 0.2% of a core, where 20 ms costs 1.7%).

Serialising them is also what keeps a connection reset from leaking: after the link dies, every
settlement in flight falls back to the management link, which reopens the receiver, and two
concurrent reopens of one ServiceBusReceiver orphan a handler (its connection, session and SSL
context) that its own keep-alive task keeps alive for good (~1 MiB each, ~20 per reset with 32
concurrent handlers). So a receiver is never reopened in place: the first failure of any call on
it marks it broken, later settlements on it are skipped (the message comes back when its lock
expires), and the next receive closes every receiver, once no call is in flight on it, and opens
new ones. Receivers come from a client with ``retry_total=0`` so the SDK does not reopen them
inside a failing call either.

A receiver is also marked broken the moment its connection drops (:func:`watch_connection`: the
event loop sees a TCP reset within milliseconds, while the SDK notices it only at its next read or
write, after the consumer may have handed out everything it had prefetched). In peek-lock mode
its deliveries not yet handed to the application are then forgotten, here and in the core's
buffer: the service gives them again when their locks expire, so handing them out too would have
them processed twice.

Every settlement and renewal is bounded by the driver's ``operation_timeout``. Closing abandons
what is unsettled (so it comes back at once), then hands the receivers to the driver to close in
the background: an SDK close waits up to a second for its keep-alive task, and nothing depends on
it once the messages are given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusReceiver
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError, SessionLockLostError

from unimq.driver import Subscription
from unimq.errors import CapabilityError, ConfigError, ConnectionError, NotFound
from unimq.message import Delivery
from unimq_servicebus.mapping import attempt_of, dead_letter_fields, to_message

if TYPE_CHECKING:
    from unimq_servicebus.driver import ServiceBusDriver

#: Settling a message whose lock is gone: the message comes back by itself, so this is not an error.
LOST = (MessageLockLostError, SessionLockLostError, MessageAlreadySettled)
#: Renew a held lock when less than this many seconds of it are left.
RENEW_MARGIN = 2.0
#: Longest wait for a settlement in flight before its receiver is closed anyway.
CLOSE_WAIT = 10.0
#: The SDK's socket read timeout on a receiver's connection while messages are unsettled (SDK: 0.2 s).
SETTLING_READ = 0.02


def watch_connection(receiver: ServiceBusReceiver, lost: Callable[[], None], watches: set[asyncio.Task[None]]) -> None:
    """Call ``lost`` once the open receiver's connection has closed: reset, or closed on purpose
    (``lost`` tells which). The watching task is kept in ``watches`` until it ends.

    The SDK offers no callback for it and reads its socket only inside a call, so this waits on
    the connection's own asyncio stream (``StreamWriter.wait_closed``). Nothing is watched where
    there is no such stream (AMQP over WebSocket): the loss is then seen at the next failing call.
    """
    connection = getattr(getattr(receiver, "_handler", None), "_connection", None)
    writer = getattr(getattr(connection, "_transport", None), "writer", None)
    if not isinstance(writer, asyncio.StreamWriter):
        return

    async def closed() -> None:
        with contextlib.suppress(Exception):  # the reset itself: what is wanted here
            await writer.wait_closed()

    task = asyncio.ensure_future(closed())
    task.add_done_callback(lambda done: None if done.cancelled() else lost())
    watches.add(task)
    task.add_done_callback(watches.discard)


class ReadPace:
    """The SDK's socket read timeout on each receiver's connection: ``SETTLING_READ`` while the
    consumer holds unsettled messages (a settlement whose outcome a concurrent receive poll read
    then sees it within 20 ms instead of 0.2 s, module docstring), the SDK's own while it holds
    none (an idle poll wakes five times a second, not fifty). Plain AMQP only: over WebSocket the
    loss of a partly read frame at a timeout is not ruled out, so the SDK's timeout stays."""

    def __init__(self) -> None:
        #: receiver -> (its SDK handler and connection, which both read with the timeout; its own)
        self._own: dict[ServiceBusReceiver, tuple[tuple[Any, Any], float]] = {}

    def add(self, receiver: ServiceBusReceiver) -> None:
        handler = getattr(receiver, "_handler", None)
        connection = getattr(handler, "_connection", None)
        writer = getattr(getattr(connection, "_transport", None), "writer", None)
        timeout = getattr(handler, "_socket_timeout", None)
        if (isinstance(writer, asyncio.StreamWriter) and isinstance(timeout, int | float)
                and getattr(connection, "_socket_timeout", None) == timeout):
            self._own[receiver] = ((handler, connection), float(timeout))

    def discard(self, receiver: ServiceBusReceiver) -> None:
        self._own.pop(receiver, None)

    def set(self, settling: bool, receiver: ServiceBusReceiver | None = None) -> None:
        """Every receiver's pace, or only ``receiver``'s."""
        paced = self._own.values() if receiver is None else [self._own[receiver]] if receiver in self._own else []
        for readers, own in paced:
            for reader in readers:
                reader._socket_timeout = min(own, SETTLING_READ) if settling else own


class ServiceBusSubscription(Subscription):
    #: Service Bus dead-letters natively (DeadLetterReason / DeadLetterErrorDescription).
    native_reject: ClassVar[bool] = True

    def __init__(self, driver: ServiceBusDriver, destination: str, group: str | None, prefetch: int) -> None:
        self._driver = driver
        self._destination = destination
        self._group = group
        self._prefetch = prefetch
        self._dead_letter = destination.endswith(driver.DLQ_SUFFIX)
        self._peek_lock = driver.options.receive_mode == "peek_lock"
        self._receivers: list[ServiceBusReceiver] = []
        self._pending: dict[ServiceBusReceiver, asyncio.Task[list[ServiceBusReceivedMessage]]] = {}
        self._backlog: deque[Delivery] = deque()
        self._unsettled: dict[int, tuple[ServiceBusReceiver, ServiceBusReceivedMessage]] = {}
        self._held: set[asyncio.Task[None]] = set()
        self._locks: dict[ServiceBusReceiver, asyncio.Lock] = {}
        self._broken: set[ServiceBusReceiver] = set()
        #: One task per receiver, ending with its connection (never cancelled: that would cancel
        #: the stream's close future, which the SDK's own close awaits).
        self._watches: set[asyncio.Task[None]] = set()
        self._renewer: Any = None
        self._pace = ReadPace()

    async def open(self) -> None:
        await self._open_receivers()
        if self._driver.options.lock_renewal and self._peek_lock:
            from azure.servicebus.aio import AutoLockRenewer

            self._renewer = AutoLockRenewer(max_lock_renewal_duration=self._driver.options.lock_renewal)

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        out: list[Delivery] = []
        backlog = self._backlog
        while backlog and len(out) < max_messages:
            out.append(backlog.popleft())
        if out:
            return out
        if self._broken:  # a settlement failed on one: none is reused in place
            await self._close_receivers()
        if not self._receivers:  # dropped after a failure: reopen (raises while the broker is away)
            await self._open_receivers()
        self._pace.set(self._settling())
        pending = self._pending
        wait = max(timeout, 0.01)
        for receiver in self._receivers:
            if receiver not in pending:
                pending[receiver] = asyncio.ensure_future(
                    receiver.receive_messages(max_message_count=max_messages, max_wait_time=wait))
        done, _ = await asyncio.wait(pending.values(), timeout=wait + 0.5, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            return out
        failure: BaseException | None = None
        for receiver, task in list(pending.items()):
            if task in done:
                del pending[receiver]
                if task.cancelled():  # the consumer is closing
                    continue
                if task.exception() is None:
                    if receiver not in self._broken or not self._peek_lock:
                        self._accept(receiver, task.result())  # else: locked to a lost receiver, they come back
                else:
                    self._lost(receiver)  # no settlement may reopen it meanwhile
                    failure = failure or task.exception()
        if failure is not None and not backlog:
            await self._drop_receivers(failure)
        self._pace.set(self._settling())
        while backlog and len(out) < max_messages:
            out.append(backlog.popleft())
        return out

    def _settling(self) -> bool:
        """Messages are unsettled, or the last one's settlement runs (popped from ``_unsettled``)."""
        return bool(self._unsettled) or any(lock.locked() for lock in self._locks.values())

    async def _open_receivers(self) -> None:
        self._receivers = await self._driver.open_receivers(self._destination, self._group, self._prefetch)
        self._locks = {receiver: asyncio.Lock() for receiver in self._receivers}
        for receiver in self._receivers:
            self._pace.add(receiver)
            watch_connection(receiver, functools.partial(self._dropped, receiver), self._watches)

    def _dropped(self, receiver: ServiceBusReceiver) -> None:
        """The receiver's connection is gone: lost, unless it was closed on purpose."""
        if receiver in self._receivers:
            self._lost(receiver)

    def _lost(self, receiver: ServiceBusReceiver) -> None:
        """Mark the receiver broken and, in peek-lock mode, forget its deliveries not yet handed out
        (here and in the core's buffer): the service gives them again once their locks expire."""
        self._broken.add(receiver)
        if not self._peek_lock:
            return  # received and deleted: these copies are the only ones
        backlog = self._backlog
        dropped = [delivery for delivery in backlog if delivery.token is receiver]
        if dropped:  # in place: a receive() in progress holds this deque
            kept = [delivery for delivery in backlog if delivery.token is not receiver]
            backlog.clear()
            backlog.extend(kept)
        for delivery in dropped + self.discard_unread(lambda delivery: delivery.token is receiver):
            self._unsettled.pop(id(delivery.native), None)

    async def _drop_receivers(self, failure: BaseException) -> None:
        """A receive failed. Missing entities and bad settings are the caller's; anything else
        may have shut the SDK's handler down for good ("Handler failed" after a connection
        reset), so close every receiver and let the next receive open new ones."""
        mapped = self._driver.map_error(failure, f"receive from {self._destination}")
        if isinstance(mapped, NotFound | ConfigError):
            raise mapped from failure
        await self._close_receivers()
        raise ConnectionError(f"servicebus: receiving from {self._destination!r} failed; "
                              f"the receiver will be reopened: {mapped}") from failure

    async def _close_receivers(self) -> None:
        """Close every receiver once nothing runs on it (closing one that a settlement is
        reopening orphans the new handler), in the background. Their unsettled messages come back
        when their locks expire; settling them from now on is a no-op."""
        receivers, self._receivers = self._receivers, []
        self._broken.update(receivers)
        pending = [self._pending.pop(r) for r in receivers if r in self._pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._unsettled = {key: (r, m) for key, (r, m) in self._unsettled.items() if r not in receivers}
        for receiver in receivers:
            self._pace.discard(receiver)
            lock = self._locks.pop(receiver, None)
            try:
                if lock is not None:
                    await asyncio.wait_for(lock.acquire(), CLOSE_WAIT)
            except TimeoutError:
                lock = None  # a settlement hangs: close under it rather than keep the consumer waiting
            self._driver.close_later(receiver)
            if lock is not None:
                lock.release()
        self._broken.clear()

    async def _call(self, receiver: ServiceBusReceiver, call: Callable[[], Awaitable[object]]) -> bool:
        """Run one settlement or lock renewal on ``receiver``: one at a time, never on a
        receiver that failed or was closed (the call would reopen it); a failure marks it
        broken. False when the call was skipped or the message's lock is gone."""
        lock = self._locks.get(receiver)
        if lock is None:
            return False  # closed: its messages come back by themselves
        async with lock:
            if receiver in self._broken or self._locks.get(receiver) is not lock:
                return False
            try:
                await self._driver.bounded(call(), f"settling or renewing a message of {self._destination!r}")
            except LOST:
                return False
            except Exception:
                self._lost(receiver)
                raise
        return True

    def _accept(self, receiver: ServiceBusReceiver, batch: list[ServiceBusReceivedMessage]) -> None:
        dead_letter = self._dead_letter
        default_session = self._driver.options.default_session_id or None
        track = self._peek_lock
        unsettled = self._unsettled
        append = self._backlog.append
        if track and batch and self.lock_timeout is None and batch[0].locked_until_utc is not None:
            # The entity's lock (set where it was made): what the runner renews by.
            self.lock_timeout = max(1.0, (batch[0].locked_until_utc - datetime.now(UTC)).total_seconds())
        for received in batch:
            delivery = Delivery(to_message(received, dead_letter, default_session), attempt_of(received), received,
                                receiver)
            if track:
                unsettled[id(received)] = (receiver, received)
            append(delivery)
        if self._renewer is not None and track:
            for received in batch:
                self._renewer.register(receiver, received)

    async def _settle(self, delivery: Delivery, action: Callable[[ServiceBusReceivedMessage], Awaitable[None]]) -> None:
        received: ServiceBusReceivedMessage = delivery.native
        if self._unsettled.pop(id(received), None) is None and self._peek_lock:
            return  # already settled on close, or by a held nack
        await self._call(delivery.token, functools.partial(action, received))

    async def ack(self, delivery: Delivery) -> None:
        if self._peek_lock:
            await self._settle(delivery, delivery.token.complete_message)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One after another: concurrent settlements on one receiver stall (module docstring)."""
        for delivery in deliveries:
            await self.ack(delivery)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        if not self._peek_lock:
            raise CapabilityError("servicebus cannot nack with receive_mode=receive_and_delete: the message was "
                                  "removed when it was received")
        receiver: ServiceBusReceiver = delivery.token
        if not delay:
            await self._settle(delivery, receiver.abandon_message)
            return
        task = asyncio.ensure_future(self._abandon_later(delivery, receiver, time.monotonic() + delay))
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def _abandon_later(self, delivery: Delivery, receiver: ServiceBusReceiver, due: float) -> None:
        """The emulated delayed nack: keep the lock until ``due`` (renewing it), then abandon."""
        received: ServiceBusReceivedMessage = delivery.native
        while (left := due - time.monotonic()) > 0:
            locked_until = received.locked_until_utc
            lock_left = (locked_until - datetime.now(UTC)).total_seconds() if locked_until else left + 1
            if left < lock_left - 0.5:
                await asyncio.sleep(left)
            elif lock_left > RENEW_MARGIN:
                await asyncio.sleep(lock_left - RENEW_MARGIN)
            elif id(received) not in self._unsettled:
                return
            else:
                try:
                    renewed = await self._call(receiver, functools.partial(receiver.renew_message_lock, received))
                except Exception:  # the receiver failed: the message comes back anyway
                    renewed = False
                if not renewed:
                    self._unsettled.pop(id(received), None)
                    return
        with contextlib.suppress(Exception):  # as above: an abandon that fails leaves the lock to expire
            await self._settle(delivery, receiver.abandon_message)

    async def reject(self, delivery: Delivery, reason: str) -> None:
        if not self._peek_lock:
            raise CapabilityError("servicebus cannot reject with receive_mode=receive_and_delete")
        short, description = dead_letter_fields(reason)
        receiver: ServiceBusReceiver = delivery.token

        async def dead_letter(received: ServiceBusReceivedMessage) -> None:
            await receiver.dead_letter_message(received, reason=short, error_description=description)

        await self._settle(delivery, dead_letter)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        received: ServiceBusReceivedMessage = delivery.native
        if id(received) in self._unsettled:
            await self._call(delivery.token, functools.partial(delivery.token.renew_message_lock, received))

    async def close(self) -> None:
        for held in self._held:
            held.cancel()
        if self._held:
            await asyncio.gather(*self._held, return_exceptions=True)
        pending = list(self._pending.items())
        self._pending.clear()
        for _, task in pending:
            task.cancel()
        for receiver, task in pending:
            with contextlib.suppress(BaseException):
                self._accept(receiver, await task)
        self._backlog.clear()
        unsettled = list(self._unsettled.values())
        self._unsettled.clear()
        for receiver, received in unsettled:
            with contextlib.suppress(Exception):
                await self._call(receiver, functools.partial(receiver.abandon_message, received))
        if self._renewer is not None:
            await self._renewer.close()
        await self._close_receivers()
