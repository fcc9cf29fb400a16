"""The handler runner behind ``Broker.consume``.

At-least-once: a message is acked only after its handler returns. What happens to a failure is
decided once, here, for every backend (see :mod:`unimq.recoverability` and docs/recoverability.md):
permanent failures are dead-lettered at once; others are re-run in place ``Retry.immediate``
times, then nacked with a backoff delay (broker-side when the backend has ``nack_delay``, so a
crash loses nothing) and dead-lettered after ``retry.max_attempts`` deliveries. A kill switch stops
consumption while most handlers fail, so an outage downstream does not burn every message's retries.

While a handler runs, the runner extends its delivery's lock before it expires (backends with
``lock_extension``), up to ``max_lock_renewal``; ``handler_timeout`` cancels a handler that runs
too long. Plain ``def`` handlers run in a thread pool of ``concurrency`` threads.

Shutdown (cancellation, ``stop`` set, or SIGTERM/SIGINT with ``handle_signals``): stop fetching, let
in-flight handlers finish within ``shutdown_timeout``, then cancel them and nack their messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import inspect
import logging
import signal
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from unimq import telemetry
from unimq.capabilities import Capabilities
from unimq.errors import ConfigError, UnimqError
from unimq.message import Delivery
from unimq.recoverability import HandlerTimeout, KillSwitch, Reject, SwitchState, SwitchTracker, failure_reason
from unimq.reliability import Retry

if TYPE_CHECKING:
    from unimq.broker import Consumer

log = logging.getLogger("unimq.runner")

Handler = Callable[[Delivery], Awaitable[Any] | Any]
AsyncHandler = Callable[[Delivery], Awaitable[Any]]

#: A lock is renewed when this fraction of it has passed: half a lock of slack for the round trip.
RENEW_AT = 0.5
#: The lock assumed when neither ``lock_timeout`` nor the adapter's options say: the default of
#: SQS queues and of the memory, Redis and NATS adapters.
DEFAULT_LOCK = 30.0
#: How many message ids the kill switch remembers failures to excuse (a bounded LRU).
EXCUSED_MAX = 10_000
#: How long one receive waits before its worker looks at the runner's state again.
RECEIVE_WAIT = 1.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Verdict(enum.Enum):
    RETRY = "retry"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"  # the user's give_up_on/retry_on predicate raised: nack, never dead-letter


async def run(
    open_consumer: Callable[[], Consumer],
    handler: Handler,
    *,
    concurrency: int,
    retry: Retry,
    shutdown_timeout: float,
    handle_signals: bool | None,
    stop: asyncio.Event | None,
    kill_switch: KillSwitch | None = None,
    handler_timeout: float | None = None,
    lock_timeout: float | None = None,
    max_lock_renewal: float = 300.0,
    wrap: Callable[[AsyncHandler], AsyncHandler] | None = None,
) -> None:
    """Consume with consumers from ``open_consumer`` (a new one after each kill-switch pause)."""
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    runner = _Runner(open_consumer, handler, concurrency, retry, shutdown_timeout, stop or asyncio.Event(),
                     kill_switch, handler_timeout, lock_timeout, max_lock_renewal, wrap)
    await runner.run(handle_signals)


class _Runner:
    def __init__(
        self,
        open_consumer: Callable[[], Consumer],
        handler: Handler,
        concurrency: int,
        retry: Retry,
        shutdown_timeout: float,
        stop: asyncio.Event,
        kill_switch: KillSwitch | None,
        handler_timeout: float | None,
        lock_timeout: float | None,
        max_lock_renewal: float,
        wrap: Callable[[AsyncHandler], AsyncHandler] | None,
    ) -> None:
        self._open_consumer = open_consumer
        self._retry = retry
        self._shutdown_timeout = shutdown_timeout
        self._stop = stop
        self._switch = SwitchTracker(kill_switch) if kill_switch is not None else None
        self._timeout = handler_timeout
        self._lock_timeout = lock_timeout
        self._max_renewal = max_lock_renewal
        self._concurrency = concurrency
        #: One worker task per concurrent handler; the idle ones wait in (or for) a receive.
        self._workers: set[asyncio.Task[None]] = set()
        self._idle: set[asyncio.Task[None] | None] = set()
        self._receiving = False
        self._receive_free = asyncio.Event()
        self._halted = False
        self._changed = asyncio.Event()
        self._error: BaseException | None = None
        self._excused: OrderedDict[str, int] = OrderedDict()
        self._loop = asyncio.get_running_loop()
        self._pool: ThreadPoolExecutor | None = None
        self._handler = self._as_async(handler, concurrency)
        if wrap is not None:
            self._handler = wrap(self._handler)
        self._consumer: Consumer | None = None
        self._caps = Capabilities(backend="unknown")
        # Lock keeping, decided per consumer in _session.
        self._extend_by = 0.0
        self._renew_every = 0.0
        self._warn_after: float | None = None
        self._warned = False
        self._watching = False
        #: Deliveries whose handler runs: (when the lock is next renewed, when the handler started).
        self._held: dict[Delivery, tuple[float, float]] = {}
        self._lock_known = False
        self._extensions: set[asyncio.Task[None]] = set()

    def _as_async(self, handler: Handler, concurrency: int) -> AsyncHandler:
        """A plain ``def`` handler runs in a pool of ``concurrency`` threads, off the event loop."""
        call = getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call):
            return handler
        pool = self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="unimq-handler")
        loop = self._loop

        async def in_thread(delivery: Delivery) -> Any:
            context = contextvars.copy_context()  # so the handler sees the delivery's trace span
            result = await loop.run_in_executor(pool, context.run, handler, delivery)
            if inspect.isawaitable(result):
                result = await result
            return result

        return in_thread

    async def run(self, handle_signals: bool | None) -> None:
        signals = _Signals.register(self._loop, self._stop, handle_signals)
        try:
            while await self._session():
                switch = self._switch
                assert switch is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), switch.pause_left())
                if self._stop.is_set():
                    return
                switch.probe()
                self._switch_changed("probing: one message tries the downstream again")
        finally:
            if signals:
                _Signals.unregister(self._loop, self._stop)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    async def _session(self) -> bool:
        """Consume until stopped (False) or until the kill switch trips (True), with one consumer."""
        consumer = self._consumer = self._open_consumer()
        self._caps = consumer.capabilities
        async with consumer:
            self._lock_keeping(consumer)
            keeper = asyncio.create_task(self._keep_locks()) if self._watching else None
            self._halted = False
            probing = self._switch is not None and self._switch.state is SwitchState.PROBING
            self._spawn(consumer, 1 if probing else self._concurrency)
            stopper = asyncio.create_task(self._stop.wait())
            try:
                while self._workers and self._error is None and not self._stop.is_set():
                    self._changed.clear()
                    changed = asyncio.create_task(self._changed.wait())
                    await asyncio.wait({changed, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    changed.cancel()
            finally:
                # Stop fetching (a receive is safe to cancel), then let running handlers finish.
                self._halt()
                stopper.cancel()
                await _drain(set(self._workers), self._shutdown_timeout)
                if keeper is not None:
                    keeper.cancel()
                for task in self._extensions:
                    task.cancel()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
        return self._tripped() and not self._stop.is_set()

    def _spawn(self, consumer: Consumer, count: int) -> None:
        for _ in range(count):
            task = asyncio.create_task(self._work(consumer))
            self._workers.add(task)
            task.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()
        self._changed.set()

    def _halt(self) -> None:
        """Take no more messages: cancel the workers waiting for one; busy ones stop after theirs."""
        self._halted = True
        for task in self._idle:
            if task is not None:
                task.cancel()

    def _tripped(self) -> bool:
        return self._switch is not None and self._switch.state is SwitchState.TRIPPED

    def _learn_lock(self, consumer: Consumer) -> None:
        """A lock first known from a delivery (an entity's own lock, read on receipt): renew by it,
        and bring forward the renewals planned from the default."""
        if self._lock_timeout or self._lock_known or consumer.lock_timeout is None:
            return
        self._lock_keeping(consumer)
        for delivery, (due, started) in list(self._held.items()):
            self._held[delivery] = (min(due, started + self._renew_every), started)

    def _lock_keeping(self, consumer: Consumer) -> None:
        """How this consumer's locks are kept: renewed (``lock_extension``), or watched to warn once."""
        self._lock_known = consumer.lock_timeout is not None
        lock = self._lock_timeout or consumer.lock_timeout
        feature = self._caps.lock_extension
        if feature and self._max_renewal > 0:
            lock = lock or DEFAULT_LOCK
            self._extend_by = min(lock, feature.limit) if feature.limit else lock
            self._renew_every = self._extend_by * RENEW_AT
            self._warn_after = None
        else:
            self._extend_by = 0.0
            self._warn_after = None if feature or not isinstance(lock, (int, float)) else float(lock)
            self._renew_every = self._warn_after or 0.0
        self._watching = bool(self._extend_by or (self._warn_after and not self._warned))

    async def _keep_locks(self) -> None:
        """One timer for all handlers in flight: renew the locks due (or warn once when one outlives
        a lock that cannot be extended). It ticks every quarter lock, so a lock is renewed between
        50 % and 75 % of its time; cheaper per message than a timer per delivery."""
        loop, held = self._loop, self._held
        while True:
            # At least once a second: a lock first learned from a delivery may be shorter than assumed.
            await asyncio.sleep(min(self._renew_every / 2, 1.0))
            now = loop.time()
            for delivery, (due, started) in list(held.items()):
                if due > now or delivery.settled:
                    continue
                if not self._extend_by:
                    self._outlived()
                    return
                if now - started >= self._max_renewal:
                    del held[delivery]
                    log.warning("message %s: its handler has run past max_lock_renewal=%gs; the lock is no longer "
                                "renewed and the message may be delivered again", delivery.message.message_id,
                                self._max_renewal, extra={"message_id": delivery.message.message_id})
                    continue
                held[delivery] = (now + self._renew_every, started)
                task = loop.create_task(self._extend(delivery))
                self._extensions.add(task)
                task.add_done_callback(self._extensions.discard)

    async def _extend(self, delivery: Delivery) -> None:
        try:
            await delivery.extend(self._extend_by)
        except Exception as exc:
            log.warning("could not extend the lock of message %s: %s: %s", delivery.message.message_id,
                        type(exc).__name__, exc, extra={"message_id": delivery.message.message_id})

    async def _work(self, consumer: Consumer) -> None:
        """Receive and handle, one message at a time. One worker receives at a time (one driver
        receive in flight per consumer), but without a hand-off: a worker whose handler never
        waits goes on through the buffered messages like a plain ``async for`` loop, with no
        event-loop turn per message; handlers that wait let the other workers in."""
        me = asyncio.current_task()
        idle, free, switch = self._idle, self._receive_free, self._switch
        while not self._halted:
            idle.add(me)
            try:
                while self._receiving:
                    free.clear()
                    await free.wait()
                self._receiving = True
                try:
                    delivery = await consumer.receive(timeout=RECEIVE_WAIT)
                finally:
                    self._receiving = False
                    free.set()
            finally:
                idle.discard(me)
            if delivery is None:
                continue
            if not self._lock_known:
                self._learn_lock(consumer)
            if self._halted:  # the switch tripped (or stop) while this receive ran: hand it back
                if switch is not None:
                    self._excuse(delivery.message.message_id)
                await _settle(delivery.nack(), delivery)
                return
            await self._process(delivery, switch is not None and switch.state is SwitchState.PROBING)

    async def _process(self, delivery: Delivery, probe: bool) -> None:
        held = self._held
        if self._watching:
            now = self._loop.time()
            held[delivery] = (now + self._renew_every, now)
        try:
            runs_left = self._retry.immediate + 1
            while True:
                try:
                    await self._invoke(delivery)
                except Exception as exc:
                    verdict = self._classify(exc)
                    runs_left -= 1
                    if verdict is _Verdict.RETRY and runs_left > 0 and not delivery.settled and not probe:
                        log.info("message %s failed, retrying at once (%d immediate retries left): %s",
                                 delivery.message.message_id, runs_left - 1, failure_reason(exc, delivery.attempt))
                        continue
                    await self._failed(delivery, exc, verdict, probe)
                else:
                    await self._succeeded(delivery, probe)
                break
        except asyncio.CancelledError:
            await _settle(delivery.nack(), delivery)
            raise
        finally:
            if held:
                held.pop(delivery, None)

    async def _invoke(self, delivery: Delivery) -> None:
        tel = telemetry.current
        if tel is None:
            await self._timed(delivery)
        else:
            consumer = self._consumer
            assert consumer is not None
            with tel.handling(consumer.broker.backend, consumer.destination, consumer.group, delivery):
                await self._timed(delivery)

    async def _timed(self, delivery: Delivery) -> None:
        if self._timeout is None:
            await self._handler(delivery)
            return
        scope = asyncio.timeout(self._timeout)
        try:
            async with scope:
                await self._handler(delivery)
        except TimeoutError:
            if not scope.expired():
                raise
            raise HandlerTimeout(f"the handler ran longer than handler_timeout={self._timeout:g}s") from None

    def _classify(self, exc: Exception) -> _Verdict:
        if isinstance(exc, Reject):
            return _Verdict.PERMANENT
        try:
            return _Verdict.PERMANENT if self._retry.is_permanent(exc) else _Verdict.RETRY
        except Exception:
            log.exception("Retry's give_up_on/retry_on predicate raised on %s; the message is retried",
                          type(exc).__name__)
            return _Verdict.UNKNOWN

    async def _succeeded(self, delivery: Delivery, probe: bool) -> None:
        await _settle(delivery.ack(), delivery)
        switch = self._switch
        if switch is None:
            return
        if self._excused:
            self._excused.pop(delivery.message.message_id, None)
        if probe and switch.state is SwitchState.PROBING:
            switch.recovered()
            self._switch_changed("running: the probe succeeded")
            if self._consumer is not None and not self._halted:
                self._spawn(self._consumer, self._concurrency - 1)
        elif switch.state is SwitchState.RUNNING:
            switch.record(False)

    async def _failed(self, delivery: Delivery, exc: Exception, verdict: _Verdict, probe: bool) -> None:
        message = delivery.message
        if verdict is _Verdict.PERMANENT:
            await self._dead_letter(delivery, exc)
            return
        switch = self._switch
        if switch is not None:
            if probe and switch.state is SwitchState.PROBING:
                switch.trip()
                self._on_trip(f"the probe failed: {failure_reason(exc, delivery.attempt)}")
            elif switch.state is SwitchState.RUNNING and switch.record(True):
                self._on_trip(f"{switch.ratio:.0%} of the last handler outcomes failed")
            if switch.state is not SwitchState.RUNNING:
                self._excuse(message.message_id)
                log.info("message %s failed while the kill switch is %s; nacked, not counted toward dead-lettering",
                         message.message_id, switch.state, extra={"message_id": message.message_id})
                await _settle(delivery.nack(), delivery)
                return
        attempt = max(1, delivery.attempt - self._excused.get(message.message_id, 0))
        if verdict is _Verdict.RETRY and attempt >= self._retry.max_attempts:
            await self._dead_letter(delivery, exc)
            return
        await self._retry_later(delivery, attempt, exc)

    async def _dead_letter(self, delivery: Delivery, exc: Exception) -> None:
        message = delivery.message
        reason = failure_reason(exc, delivery.attempt)
        self._excused.pop(message.message_id, None)
        log.error("message %s dead-lettered: %s", message.message_id, reason,
                  extra={"message_id": message.message_id, "correlation_id": message.correlation_id})
        try:
            await delivery.reject(reason=reason)
        except Exception as err:
            # Nothing may be lost: a reject that did not happen becomes a (delayed) retry.
            log.error("could not dead-letter message %s, nacking it instead: %s: %s", message.message_id,
                      type(err).__name__, err, extra={"message_id": message.message_id})
            await self._retry_later(delivery, delivery.attempt, exc)

    async def _retry_later(self, delivery: Delivery, attempt: int, exc: Exception) -> None:
        message = delivery.message
        delay = self._retry.backoff(attempt)
        if telemetry.current is not None:
            telemetry.current.retried.add(1, {"messaging.destination.name": delivery.destination})
        log.info("message %s failed (attempt %d), retrying in %.2fs: %s", message.message_id, delivery.attempt,
                 delay, failure_reason(exc, delivery.attempt),
                 extra={"message_id": message.message_id, "correlation_id": message.correlation_id})
        feature = self._caps.nack_delay
        if feature:
            if feature.limit is not None:
                delay = min(delay, feature.limit)
            await _settle(delivery.nack(delay=delay), delivery)
        else:
            await asyncio.sleep(delay)
            await _settle(delivery.nack(), delivery)

    def _excuse(self, message_id: str) -> None:
        """Remember that one delivery of ``message_id`` failed because of the outage, not the message."""
        excused = self._excused
        excused[message_id] = excused.pop(message_id, 0) + 1
        if len(excused) > EXCUSED_MAX:
            excused.popitem(last=False)

    def _on_trip(self, why: str) -> None:
        switch = self._switch
        assert switch is not None
        self._switch_changed(f"tripped ({why}); no new messages for {switch.config.restart_seconds:g}s",
                             level=logging.WARNING)
        self._halt()

    def _switch_changed(self, what: str, level: int = logging.INFO) -> None:
        switch = self._switch
        consumer = self._consumer
        assert switch is not None and consumer is not None
        log.log(level, "kill switch of %r: %s", consumer.destination, what,
                extra={"kill_switch": str(switch.state), "failure_ratio": switch.ratio})
        if telemetry.current is not None:
            telemetry.current.kill_switch_changed(consumer.broker.backend, consumer.destination, consumer.group,
                                                  str(switch.state), switch.ratio)

    def _outlived(self) -> None:
        if self._warned or self._consumer is None:
            return
        self._warned = True
        consumer = self._consumer
        log.warning("a handler of %r has run longer than the %gs lock, and %s cannot extend locks "
                    "(lock_extension: none): its message may be delivered again while it runs; "
                    "use a longer lock_timeout or shorter handlers", consumer.destination, self._warn_after,
                    self._caps.backend)


class _Signals:
    """SIGTERM/SIGINT set the stop event of every runner of the loop that asked for them."""

    stops: ClassVar[set[asyncio.Event]] = set()
    previous: ClassVar[dict[int, Any]] = {}

    @classmethod
    def register(cls, loop: asyncio.AbstractEventLoop, stop: asyncio.Event, wanted: bool | None) -> bool:
        if wanted is False:
            return False
        main = threading.current_thread() is threading.main_thread()
        if not main:
            if wanted:
                raise ConfigError("handle_signals=True needs consume() to run in the main thread; "
                                  "pass handle_signals=False and set stop= yourself")
            return False
        if not cls.stops:
            # By default, leave signals alone when the application already handles SIGTERM (SIGINT
            # says little: asyncio.run() installs its own handler for it).
            if wanted is None and signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
                return False
            cls.previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
            try:
                for sig in SIGNALS:
                    loop.add_signal_handler(sig, cls._fire)
            except NotImplementedError:  # Windows event loops
                if wanted:
                    raise ConfigError("handle_signals=True is not supported by this event loop") from None
                return False
        cls.stops.add(stop)
        return True

    @classmethod
    def unregister(cls, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        cls.stops.discard(stop)
        if not cls.stops:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
                if cls.previous.get(sig) is not None:
                    signal.signal(sig, cls.previous[sig])

    @classmethod
    def _fire(cls) -> None:
        for stop in cls.stops:
            stop.set()


async def _settle(settlement: Awaitable[None], delivery: Delivery) -> None:
    """A settlement that fails (typically: the connection dropped) is logged, not raised from a
    task nobody awaits; the unsettled message comes back after its lock timeout or reconnect."""
    try:
        await settlement
    except UnimqError as exc:
        log.warning("could not settle message %s; it will be redelivered: %s", delivery.message.message_id, exc,
                    extra={"message_id": delivery.message.message_id})


async def _drain(in_flight: set[asyncio.Task[None]], timeout: float) -> None:
    """Let running handlers finish; cancel (and so nack) the ones still running at the deadline."""
    if not in_flight:
        return
    _, pending = await asyncio.wait(set(in_flight), timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        log.warning("shutdown: %d handlers did not finish in %.1fs; their messages were nacked", len(pending), timeout)
        await asyncio.gather(*pending, return_exceptions=True)
