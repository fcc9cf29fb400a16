"""The portable types users hold: Broker, Producer, Consumer, and ``connect()``.

They wrap one :class:`~unimq.driver.Driver` and do the work every backend needs: capability
checks before any network call, chunking and pipelining of batches, retry of retryable send
failures with backoff and jitter, bounded prefetch (backpressure), payload decoding with
dead-lettering of invalid payloads, dead-letter emulation, and wrapping of driver errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel

from unimq import registry, telemetry
from unimq.capabilities import Capabilities, check_limit, check_message
from unimq.codecs import CONTENT_ENCODING, Codec, RawCodec, codec_for, decompress
from unimq.driver import DestinationSpec, Driver, ReceiveSettings, Start, Stats, Subscription
from unimq.errors import CapabilityError, Closed, ConfigError, PublishError, UnimqError
from unimq.message import Delivery, Message, new_message_id
from unimq.reliability import Retry, dead_letter_copy
from unimq.url import BrokerURL, parse_options, parse_url

T = TypeVar("T")
log = logging.getLogger("unimq.consumer")

DEFAULT_URL = "memory://"
#: How many batches of one ``send_many`` may be in flight at once when order need not be kept.
PIPELINE_DEPTH = 8
#: A consumer's backoff between receives that failed with a retryable error; it never gives up.
RECEIVE_RETRY = Retry(max_attempts=1, initial=timedelta(milliseconds=100), max_delay=timedelta(seconds=2))
#: The producer's default: a few quick retries of retryable failures (connection loss, timeouts).
SEND_RETRY = Retry(max_attempts=4, initial=timedelta(milliseconds=100), max_delay=timedelta(seconds=2))


class Broker:
    """A connection to one backend, chosen by URL. Create it with :func:`unimq.connect`."""

    def __init__(self, driver: Driver, url: BrokerURL) -> None:
        self._driver = driver
        self._url = url
        self._closed = False
        self._consumers: set[Consumer] = set()

    def __repr__(self) -> str:
        return f"<unimq.Broker {self._url.redacted()}>"

    @property
    def url(self) -> str:
        """The URL with secrets masked."""
        return self._url.redacted()

    @property
    def backend(self) -> str:
        return self._driver.name

    @property
    def capabilities(self) -> Capabilities:
        return self._driver.capabilities

    @property
    def native(self) -> Any:
        """The underlying client (escape hatch); see the adapter's docs for its type."""
        return self._driver.native

    @property
    def closed(self) -> bool:
        return self._closed

    def capabilities_for(self, destination: str) -> Capabilities:
        return self._driver.capabilities_for(destination)

    def dead_letter_destination(self, destination: str) -> str:
        """The name rejected messages of ``destination`` go to; consume it to read them back."""
        return self._driver.dead_letter_destination(destination)

    def producer(
        self,
        destination: str,
        *,
        schema: type[BaseModel] | None = None,
        codec: Codec | None = None,
        retry: Retry | None = SEND_RETRY,
    ) -> Producer:
        """A producer for ``destination``. ``retry=None`` disables retries of failed sends."""
        self._check_open()
        return Producer(self, destination, codec_for(schema, codec), retry)

    def consumer(
        self,
        destination: str,
        group: str | None = None,
        *,
        prefetch: int = 100,
        schema: type[BaseModel] | None = None,
        codec: Codec | None = None,
        lock_timeout: timedelta | float | None = None,
        start: Start = None,
    ) -> Consumer:
        """A consumer of ``destination`` in ``group`` (None = the destination's default group).

        ``prefetch`` bounds the messages received but not yet settled; ``lock_timeout`` is how
        long an unsettled message stays invisible to others; ``start`` is where a new group begins
        reading on backends with ``replay``.
        """
        self._check_open()
        caps = self._driver.capabilities_for(destination)
        if group is not None and not caps.fanout:
            raise CapabilityError.unsupported(
                caps.backend, f"group={group!r}", "fanout",
                "Its consumers always compete for one queue: pass group=None, or use one destination per group.",
            )
        if start is not None and not caps.replay:
            raise CapabilityError.unsupported(caps.backend, "start=", "replay", "Omit start=.")
        seconds = lock_timeout.total_seconds() if isinstance(lock_timeout, timedelta) else lock_timeout
        try:
            settings = ReceiveSettings(prefetch=prefetch, lock_timeout=seconds, start=start)
        except ValueError as exc:
            raise ConfigError(f"consumer options: {exc}") from None
        sub = self._driver.subscription(destination, group, settings)
        return Consumer(self, destination, group, sub, settings, codec_for(schema, codec))

    async def consume(
        self,
        destination: str,
        handler: Callable[[Delivery], Awaitable[Any] | Any],
        *,
        group: str | None = None,
        concurrency: int = 1,
        retry: Retry | None = None,
        prefetch: int | None = None,
        schema: type[BaseModel] | None = None,
        codec: Codec | None = None,
        lock_timeout: timedelta | float | None = None,
        shutdown_timeout: float = 30.0,
        handle_signals: bool = False,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Run ``handler`` on every message until cancelled, ``stop`` is set, or SIGTERM.

        A message is acked only after its handler returns; a failure is retried with backoff
        (``retry``) and dead-lettered after the last attempt with the exception as reason.
        """
        from unimq.runner import run

        consumer = self.consumer(
            destination, group, prefetch=prefetch or max(concurrency, 1) * 2, schema=schema, codec=codec,
            lock_timeout=lock_timeout,
        )
        await run(
            consumer, handler, concurrency=concurrency, retry=retry or Retry(),
            shutdown_timeout=shutdown_timeout, handle_signals=handle_signals, stop=stop,
        )

    async def ensure(self, destination: str, **spec: Any) -> None:
        """Provision ``destination`` (and its groups, dead-letter destination, …) where the backend allows."""
        self._check_open()
        try:
            parsed = DestinationSpec(**spec)
        except ValueError as exc:
            raise ConfigError(f"ensure({destination!r}): {exc}") from None
        caps = self._driver.capabilities_for(destination)
        if parsed.deduplication:
            check_limit(caps, "deduplication=", "deduplication", parsed.deduplication.total_seconds(),
                         "De-duplicate in the consumer (unimq.migrate.MergedConsumer keeps a window).")
        if parsed.max_priority:
            check_limit(caps, "max_priority=", "priority", parsed.max_priority, "Use a destination per priority.")
        if parsed.groups and not caps.fanout:
            raise CapabilityError.unsupported(caps.backend, "groups=", "fanout",
                                              "Its consumers always compete for one queue: drop groups=.")
        await self._guard(self._driver.ensure(destination, parsed), f"ensure {destination}")

    async def peek(self, destination: str, count: int = 10) -> list[Message]:
        """Read up to ``count`` waiting messages without consuming them."""
        self._check_open()
        caps = self._driver.capabilities_for(destination)
        if not caps.peek:
            raise CapabilityError.unsupported(caps.backend, "peek()", "peek", "Receive and nack instead.")
        return await self._guard(self._driver.peek(destination, count), f"peek {destination}")

    async def stats(self, destination: str, group: str | None = None) -> Stats:
        self._check_open()
        return await self._guard(self._driver.stats(destination, group), f"stats {destination}")

    async def destinations(self) -> list[str]:
        self._check_open()
        try:
            return await self._guard(self._driver.destinations(), "list destinations")
        except NotImplementedError:
            raise CapabilityError(f"{self.backend} cannot list its destinations") from None

    async def delete(self, destination: str) -> None:
        """Remove ``destination`` and what ``ensure`` created for it."""
        self._check_open()
        await self._guard(self._driver.delete(destination), f"delete {destination}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            with contextlib.suppress(Exception):
                await consumer.close()
        await self._guard(self._driver.close(), "close")

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"the {self.backend} broker {self.url} is closed")

    async def _guard(self, awaitable: Awaitable[T], context: str) -> T:
        """Await a driver call, turning client-library exceptions into unimq errors."""
        try:
            return await awaitable
        except (UnimqError, NotImplementedError):
            raise
        except Exception as exc:
            raise self._driver.map_error(exc, context) from exc


class Producer:
    """Sends to one destination. Safe to share between tasks."""

    def __init__(self, broker: Broker, destination: str, codec: Codec, retry: Retry | None) -> None:
        self.destination = destination
        self._broker = broker
        self._driver = broker._driver
        self._codec = codec
        self._retry = retry
        self._caps = broker._driver.capabilities_for(destination)
        batch = self._caps.batch_send
        self._batch_size = int(batch.limit) if batch and batch.limit else (1 if not batch else 1000)
        self._keep_order = self._caps.ordering != "none"
        self._closed = False

    def __repr__(self) -> str:
        return f"<unimq.Producer {self.destination!r} on {self._broker.backend}>"

    async def send(
        self,
        body: Any,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        content_type: str | None = None,
        delay: timedelta | None = None,
        ttl: timedelta | None = None,
        priority: int | None = None,
    ) -> Message:
        """Send one message and wait until the broker has accepted it. Returns the sent Message."""
        message = self._message(body, key, headers, message_id, correlation_id, reply_to, content_type,
                                delay, ttl, priority)
        failed = await self._publish([message])
        if failed:
            error = failed[0][1]
            raise PublishError(f"send to {self.destination!r} failed: {error}", messages=[message],
                               results=[error], retryable=getattr(error, "retryable", False)) from error
        return message

    async def send_many(self, items: Iterable[Any]) -> list[Message]:
        """Send many messages with the backend's native batching, pipelined.

        Raises :class:`PublishError` whose ``results`` say, per message, which failed.
        """
        messages = [self._message(item) for item in items]
        for message in messages:
            check_message(self._caps, message)
        size = self._batch_size
        chunks = [messages[i:i + size] for i in range(0, len(messages), size)]
        failures: list[tuple[Message, UnimqError]] = []
        if self._keep_order or len(chunks) == 1:
            for chunk in chunks:
                failures += await self._publish(chunk, checked=True)
        else:
            gate = asyncio.Semaphore(PIPELINE_DEPTH)

            async def one(chunk: list[Message]) -> list[tuple[Message, UnimqError]]:
                async with gate:
                    return await self._publish(chunk, checked=True)

            for result in await asyncio.gather(*(one(c) for c in chunks)):
                failures += result
        if failures:
            by_id = {id(m): e for m, e in failures}
            raise PublishError(
                f"{len(failures)} of {len(messages)} messages to {self.destination!r} failed; first: {failures[0][1]}",
                messages=messages, results=[by_id.get(id(m)) for m in messages],
            )
        return messages

    async def close(self) -> None:
        self._closed = True

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _message(
        self,
        body: Any,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        content_type: str | None = None,
        delay: timedelta | None = None,
        ttl: timedelta | None = None,
        priority: int | None = None,
    ) -> Message:
        if isinstance(body, Message):
            message = body
            if not isinstance(self._codec, RawCodec) and not isinstance(message.body, bytes):
                message.body = self._codec.encode(message.body)
        else:
            # Positional, in Message's field order (keywords cost ~0.3 µs more per message here).
            message = Message(
                self._codec.encode(body), key, dict(headers) if headers else {},
                new_message_id() if message_id is None else message_id, correlation_id, reply_to,
                content_type or self._codec.content_type, None, delay, ttl, priority,
            )
            if self._codec.content_encoding:
                message.headers[CONTENT_ENCODING] = self._codec.content_encoding
        if not isinstance(message.body, bytes):
            raise TypeError(f"message body must be bytes, got {type(message.body).__name__}")
        return message

    async def _publish(self, messages: list[Message], checked: bool = False) -> list[tuple[Message, UnimqError]]:
        """Publish, retrying retryable failures; return the (message, error) pairs that finally failed."""
        tel = telemetry.current
        if tel is None:
            return await self._publish_with_retry(messages, checked)
        with tel.publishing(self._broker.backend, self.destination, messages, bool(self._caps.headers)) as record:
            failed = await self._publish_with_retry(messages, checked)
            record.extend(failed)
        return failed

    async def _publish_with_retry(self, messages: list[Message], checked: bool) -> list[tuple[Message, UnimqError]]:
        if self._closed or self._broker._closed:
            raise Closed(f"producer for {self.destination!r} is closed")
        if not checked:
            for message in messages:
                check_message(self._caps, message)
        pending = messages
        attempts = self._retry.max_attempts if self._retry else 1
        for attempt in range(1, attempts + 1):
            try:
                results: Sequence[BaseException | None] = await self._driver.publish(self.destination, pending)
            except (UnimqError, NotImplementedError) as exc:
                results = [exc] * len(pending)
            except Exception as exc:  # a client-library error: wrap once, for all messages
                results = [self._driver.map_error(exc, f"publish to {self.destination}")] * len(pending)
            failed = [(m, self._wrap(r)) for m, r in zip(pending, results, strict=True) if r is not None]
            if not failed:
                return []
            retryable = [m for m, e in failed if e.retryable]
            if attempt == attempts or len(retryable) < len(failed):
                return failed
            assert self._retry is not None
            await asyncio.sleep(self._retry.backoff(attempt))
            pending = retryable
        return []

    def _wrap(self, error: BaseException) -> UnimqError:
        if isinstance(error, UnimqError):
            return error
        return self._driver.map_error(error, f"publish to {self.destination}")


class Consumer:
    """Reads one destination in one group: an async iterator of :class:`Delivery`.

    At most ``prefetch`` messages are received and not yet settled; past that the consumer waits
    for settlements before fetching more (backpressure, bounded memory).
    """

    def __init__(
        self,
        broker: Broker,
        destination: str,
        group: str | None,
        subscription: Subscription,
        settings: ReceiveSettings,
        codec: Codec,
    ) -> None:
        self.destination = destination
        self.group = group
        self._broker = broker
        self._driver = broker._driver
        self._sub = subscription
        self._prefetch = settings.prefetch
        self._codec = codec
        self._decode = not isinstance(codec, RawCodec)
        self._caps = broker._driver.capabilities_for(destination)
        self._buffer: deque[Delivery] = deque()
        self._unsettled = 0
        self._room: asyncio.Future[None] | None = None
        self._receive_failures = 0
        self._opened = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<unimq.Consumer {self.destination!r} group={self.group!r} on {self._broker.backend}>"

    @property
    def subscription(self) -> Subscription:
        """The driver's reader (escape hatch)."""
        return self._sub

    async def open(self) -> Consumer:
        if self._closed:
            raise Closed(f"consumer of {self.destination!r} is closed")
        if not self._opened:
            self._broker._check_open()
            await self._broker._guard(self._sub.open(), f"open consumer of {self.destination}")
            self._opened = True
            self._broker._consumers.add(self)
        return self

    async def close(self) -> None:
        """Stop receiving. Messages not yet settled become redeliverable to other consumers."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._broker._consumers.discard(self)
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        if self._opened:
            await self._broker._guard(self._sub.close(), f"close consumer of {self.destination}")

    async def __aenter__(self) -> Consumer:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Delivery:
        if self._closed:
            raise StopAsyncIteration
        delivery = await self._next(None)
        if delivery is None:
            raise StopAsyncIteration
        return delivery

    async def receive(self, timeout: timedelta | float | None = None) -> Delivery | None:
        """The next delivery, or None if none arrives within ``timeout`` (None waits forever)."""
        if self._closed:
            raise Closed(f"consumer of {self.destination!r} is closed")
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        return await self._next(seconds)

    async def receive_many(self, count: int, timeout: timedelta | float) -> list[Delivery]:
        """Up to ``count`` deliveries, waiting at most ``timeout`` in all."""
        if self._closed:
            raise Closed(f"consumer of {self.destination!r} is closed")
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        deadline = time.monotonic() + seconds
        out = await self._take(count)
        while len(out) < count:
            # _next fetches the next batch into the buffer and returns its first delivery; the
            # rest of the batch is taken in one pass rather than one receive() per message.
            delivery = await self._next(max(0.0, deadline - time.monotonic()))
            if delivery is None:
                break
            out.append(delivery)
            out += await self._take(count - len(out))
        return out

    async def receive_batch(self, max_messages: int, timeout: timedelta | float) -> list[Delivery]:
        """Wait up to ``timeout`` for one delivery, then return it with what is already buffered.

        The batch-processing call (like Kafka's ``getmany`` or a JetStream fetch): it never waits
        to fill the batch, so a consumer settles what it has while the next batch is fetched.
        """
        first = await self.receive(timeout)
        if first is None:
            return []
        return [first, *await self._take(max_messages - 1)]

    async def _take(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` buffered deliveries, decoded; those that fail to decode are dead-lettered."""
        buffer = self._buffer
        out: list[Delivery] = []
        while buffer and len(out) < limit:
            delivery = buffer.popleft()
            needs_decoding = self._decode or CONTENT_ENCODING in delivery.message.headers
            if needs_decoding and not await self._decode_payload(delivery):
                continue
            out.append(delivery)
        self._unsettled += len(out)
        if telemetry.current is not None:
            for delivery in out:
                telemetry.current.received(self._broker.backend, self.destination, self.group, delivery)
        return out

    async def _next(self, timeout: float | None) -> Delivery | None:
        if not self._opened:
            await self.open()
        deadline = None if timeout is None else time.monotonic() + timeout
        buffer = self._buffer
        while True:
            while buffer:
                delivery = buffer.popleft()
                needs_decoding = self._decode or CONTENT_ENCODING in delivery.message.headers
                if needs_decoding and not await self._decode_payload(delivery):
                    continue
                self._unsettled += 1
                if telemetry.current is not None:
                    telemetry.current.received(self._broker.backend, self.destination, self.group, delivery)
                return delivery
            if self._closed:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            room = self._prefetch - self._unsettled
            if room <= 0:
                await self._wait_for_room(remaining)
                continue
            wait = 1.0 if remaining is None else min(1.0, remaining)
            try:
                batch = await self._broker._guard(self._sub.receive(room, wait), f"receive from {self.destination}")
            except UnimqError as exc:
                # A lost connection is not the caller's problem: the driver reconnects on the next
                # receive, so back off and try again (until the caller's timeout, if any).
                if not exc.retryable or self._closed:
                    raise
                self._receive_failures += 1
                pause = RECEIVE_RETRY.backoff(self._receive_failures)
                log.warning("receive from %r failed (%d in a row), retrying in %.2fs: %s",
                            self.destination, self._receive_failures, pause, exc)
                await asyncio.sleep(pause if remaining is None else min(pause, remaining))
                continue
            self._receive_failures = 0
            for delivery in batch:
                delivery._consumer = self
            buffer.extend(batch)

    async def _wait_for_room(self, timeout: float | None) -> None:
        # One future shared by every task waiting on this consumer, so a settlement wakes them all.
        room = self._room
        if room is None or room.done():
            room = self._room = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(room), timeout)

    def _settled(self, delivery: Delivery, outcome: str) -> None:
        if telemetry.current is not None:
            telemetry.current.settled(self._broker.backend, self.destination, self.group, delivery, outcome)
        self._release(1)

    def _release(self, settled: int) -> None:
        """``settled`` deliveries no longer count against prefetch: wake whoever waits for room."""
        self._unsettled -= settled
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    async def _decode_payload(self, delivery: Delivery) -> bool:
        """Decode the body; a payload that fails is dead-lettered with the error as reason."""
        try:
            body = delivery.message.body
            encoding = delivery.message.headers.get(CONTENT_ENCODING)
            if encoding:
                body = decompress(body, encoding)
            delivery.payload = self._codec.decode(body) if self._decode else body
            return True
        except Exception as exc:
            self._unsettled += 1
            delivery.settled = True
            await self._reject(delivery, f"payload failed to decode: {type(exc).__name__}: {exc}")
            return False

    # Settlement, called by Delivery after its own idempotence check.

    def _check_nack(self, delay: float | None) -> None:
        if delay:
            feature = self._caps.nack_delay
            if not feature:
                raise CapabilityError.unsupported(self._caps.backend, "nack(delay=...)", "nack_delay",
                                                  "nack() without a delay, or sleep before nack().")
            if feature.limit is not None and delay > feature.limit:
                raise CapabilityError(f"{self._caps.backend} cannot delay a nack by {delay:g}s: "
                                      f"its 'nack_delay' limit is {feature.limit:g}s")

    def _check_reject(self) -> None:
        if not self._caps.dead_letter:
            raise CapabilityError.unsupported(self._caps.backend, "reject()", "dead_letter",
                                              "ack() and record the failure yourself.")

    async def _ack(self, delivery: Delivery) -> None:
        # The per-message hot path: the driver call is guarded inline rather than through _guard.
        try:
            await self._sub.ack(delivery)
        except (UnimqError, NotImplementedError):
            raise
        except Exception as exc:
            raise self._driver.map_error(exc, f"ack on {self.destination}") from exc
        finally:
            self._settled(delivery, "ack")

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries at once, in one round trip where the backend allows."""
        pending = [d for d in deliveries if not d.settled]
        for delivery in pending:
            if delivery._consumer is not self:
                raise ValueError("ack_many takes deliveries received by this consumer")
            delivery.settled = True
        try:
            await self._broker._guard(self._sub.ack_many(pending), f"ack on {self.destination}")
        finally:
            if telemetry.current is not None:
                for delivery in pending:
                    telemetry.current.settled(self._broker.backend, self.destination, self.group, delivery, "ack")
            self._release(len(pending))

    async def _nack(self, delivery: Delivery, delay: float | None) -> None:
        try:
            await self._broker._guard(self._sub.nack(delivery, delay), f"nack on {self.destination}")
        finally:
            self._settled(delivery, "nack")

    async def _reject(self, delivery: Delivery, reason: str) -> None:
        try:
            try:
                await self._broker._guard(self._sub.reject(delivery, reason), f"reject on {self.destination}")
            except NotImplementedError:
                await self._emulate_reject(delivery, reason)
        finally:
            self._settled(delivery, "reject")

    async def _emulate_reject(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter emulation: publish a copy to the dead-letter destination, then ack."""
        target = self._driver.dead_letter_destination(self.destination)
        copy = dead_letter_copy(delivery.message, reason, self.destination, self.group)
        results = await self._broker._guard(self._driver.publish(target, [copy]), f"dead-letter to {target}")
        if results and results[0] is not None:
            raise PublishError(f"could not dead-letter {delivery.message.message_id} to {target}: {results[0]}",
                               messages=[copy], results=list(results))
        await self._broker._guard(self._sub.ack(delivery), f"ack on {self.destination}")

    async def _extend(self, delivery: Delivery, seconds: float) -> None:
        check_limit(self._caps, "extend()", "lock_extension", seconds,
                     "Use a longer lock_timeout, or ack and track progress yourself.")
        await self._broker._guard(self._sub.extend(delivery, seconds), f"extend on {self.destination}")


class _Connect:
    """What :func:`connect` returns: awaitable, and an async context manager that closes."""

    def __init__(self, url: str | None, require: Iterable[str], options: dict[str, Any]) -> None:
        self._url = url
        self._require = tuple(require)
        self._options = options
        self._broker: Broker | None = None

    def __await__(self) -> Generator[Any, None, Broker]:
        return self._open().__await__()

    async def __aenter__(self) -> Broker:
        self._broker = await self._open()
        return self._broker

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            await self._broker.close()

    async def _open(self) -> Broker:
        url = self._url or os.environ.get("UNIMQ_URL") or DEFAULT_URL
        parsed = parse_url(url)
        driver_cls = registry.load(parsed.scheme)
        options = parse_options(driver_cls.Options, driver_cls.name, {**parsed.query, **self._options})
        driver = driver_cls(parsed, options)
        if self._require:
            driver.capabilities.require(self._require)
        try:
            await driver.open()
        except UnimqError:
            raise
        except Exception as exc:
            raise driver.map_error(exc, f"connecting to {parsed.redacted()}") from exc
        return Broker(driver, parsed)


def connect(url: str | None = None, *, require: Iterable[str] = (), **options: Any) -> _Connect:
    """Connect to the broker at ``url`` (default: ``$UNIMQ_URL``, else ``memory://``).

    ``require`` names capabilities that must not be ``none``; ``options`` override the URL's query
    parameters. Use as ``broker = await connect(...)`` or ``async with connect(...) as broker``.
    """
    return _Connect(url, require, options)

