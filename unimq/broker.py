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
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel

from unimq import durations, operations, registry, telemetry
from unimq.capabilities import Capabilities, check_message, check_spec
from unimq.codecs import CONTENT_ENCODING, Codec, RawCodec, codec_for, decompress
from unimq.driver import DestinationSpec, Driver, ReceiveSettings, Start, Stats, Subscription
from unimq.errors import (
    AuthenticationError,
    BrokerConnectionError,
    CapabilityError,
    Closed,
    ConfigError,
    PublishError,
    UnimqError,
)
from unimq.message import Delivery, Message, new_message_id
from unimq.middleware import Chain, Middleware, Nack
from unimq.operations import DeadLetter, Health, RedriveReport
from unimq.patterns import SUBJECT, TEMPORARY_PREFIX, Filter, Requester, check_subject, created_at, temporary_name
from unimq.recoverability import KillSwitch
from unimq.reliability import DEAD_LETTER_REASON, Retry
from unimq.runner import AsyncHandler, run
from unimq.settlement import Settlement
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
        self._middlewares: list[Middleware] = []
        self._requester: Requester | None = None

    def __repr__(self) -> str:
        return f"<unimq.Broker {self._url.redacted()}>"

    def _chain(self, extra: Sequence[Middleware]) -> Chain:
        for middleware in extra:
            if not isinstance(middleware, Middleware):
                raise ConfigError(f"middlewares= takes unimq.middleware.Middleware objects, got "
                                  f"{type(middleware).__name__}")
        return Chain([*self._middlewares, *extra])

    def use(self, *middlewares: Middleware) -> Broker:
        """Add middlewares (see :mod:`unimq.middleware`) for the producers and consumers made from now on."""
        for middleware in middlewares:
            if not isinstance(middleware, Middleware):
                raise ConfigError(f"use() takes unimq.middleware.Middleware objects, got {type(middleware).__name__}")
        self._middlewares += middlewares
        return self

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
        middlewares: Sequence[Middleware] = (),
        claim_check: Any = None,
        threshold: int | None = None,
    ) -> Producer:
        """A producer for ``destination``. ``retry=None`` disables retries of failed sends;
        ``middlewares`` run after the broker's own (``Broker.use``); ``claim_check`` (a store of
        :mod:`unimq.payloads`) sends bodies over ``threshold`` (default: the backend's limit) by reference."""
        self._check_open()
        if claim_check is not None:
            middlewares = [*middlewares, self._claim_check(claim_check, threshold)]
        elif threshold is not None:
            raise ConfigError("threshold= goes with claim_check= (the store large bodies go to)")
        return Producer(self, destination, codec_for(schema, codec), retry, self._chain(middlewares))

    def _claim_check(self, store: Any, threshold: int | None = None) -> Middleware:
        from unimq.payloads import ClaimCheck

        return ClaimCheck(store, threshold, broker=self)

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
        max_decoded_bytes: int | None = None,
        middlewares: Sequence[Middleware] = (),
        subject: str | None = None,
        headers: Mapping[str, str] | None = None,
        claim_check: Any = None,
    ) -> Consumer:
        """A consumer of ``destination`` in ``group`` (None = the destination's default group).

        ``prefetch`` bounds the messages received but not yet settled; ``lock_timeout`` is how
        long an unsettled message stays invisible to others; ``start`` is where a new group begins
        reading on backends with ``replay``; ``max_decoded_bytes`` bounds a decompressed body
        (default: 4 × the backend's message limit): a bigger one is dead-lettered. ``subject`` (a
        pattern: ``*`` one token, ``#`` any number) and ``headers`` give the group only the
        messages that match (see :mod:`unimq.patterns`). ``claim_check`` (a store of
        :mod:`unimq.payloads`) resolves bodies sent by reference.
        """
        self._check_open()
        caps = self._driver.capabilities_for(destination)
        if group is not None and (not isinstance(group, str) or not group):
            raise ConfigError(f"group must be a non-empty str or None (the default group), got {group!r}")
        if group is not None and not caps.fanout:
            raise CapabilityError.unsupported(
                caps.backend, f"group={group!r}", "fanout",
                "Its consumers always compete for one queue: pass group=None, or use one destination per group.",
            )
        if start is not None and not caps.replay:
            raise CapabilityError.unsupported(caps.backend, "start=", "replay", "Omit start=.")
        seconds = durations.optional_seconds(lock_timeout, "lock_timeout", allow_zero=False)
        if max_decoded_bytes is not None and (not isinstance(max_decoded_bytes, int) or max_decoded_bytes < 1):
            raise ConfigError(f"max_decoded_bytes must be an int >= 1, got {max_decoded_bytes!r}")
        wanted = None if subject is None and headers is None else Filter(subject, headers)
        try:
            settings = ReceiveSettings(prefetch=prefetch, lock_timeout=seconds, start=start, subject=subject,
                                       headers=headers)
        except ValueError as exc:
            raise ConfigError(f"consumer options: {_first_error(exc)}") from None
        if claim_check is not None:
            middlewares = [*middlewares, self._claim_check(claim_check)]
        sub = self._driver.subscription(destination, group, settings)
        limit = max_decoded_bytes or 4 * caps.max_message_bytes
        return Consumer(self, destination, group, sub, settings, codec_for(schema, codec), limit,
                        self._chain(middlewares), wanted)

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
        shutdown_timeout: timedelta | float = 30.0,
        handle_signals: bool | None = None,
        stop: asyncio.Event | None = None,
        kill_switch: KillSwitch | None = None,
        handler_timeout: timedelta | float | None = None,
        max_lock_renewal: timedelta | float = timedelta(minutes=5),
        idempotency: Any = None,
        idempotency_key: Callable[[Delivery], str] | None = None,
    ) -> None:
        """Run ``handler`` on every message until cancelled, ``stop`` is set, or SIGTERM/SIGINT.

        A message is acked only after its handler returns. A failure is retried per ``retry``
        (``unimq.Retry``: immediate re-runs, then delayed redeliveries with backoff) and dead-lettered
        after the last attempt, or at once for ``unimq.Reject`` and ``Retry(give_up_on=...)``.
        ``kill_switch`` (``unimq.KillSwitch``) pauses consumption while most handlers fail;
        ``handler_timeout`` cancels a handler that runs too long (a retryable failure). While a
        handler runs, its lock is extended before it expires (backends with ``lock_extension``),
        for at most ``max_lock_renewal`` (0 disables). Plain ``def`` handlers run in a pool of
        ``concurrency`` threads. ``handle_signals`` (default: when called in the main thread and
        the application has no SIGTERM handler of its own) stops gracefully on SIGTERM/SIGINT. ``idempotency``
        (a store from :mod:`unimq.idempotency`) skips messages already processed, keyed by
        ``idempotency_key`` (default: the message id). See docs/recoverability.md.
        """
        if kill_switch is not None and not isinstance(kill_switch, KillSwitch):
            raise ConfigError(f"kill_switch must be a unimq.KillSwitch, got {type(kill_switch).__name__}")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError(f"retry must be a unimq.Retry, got {type(retry).__name__}")
        if idempotency_key is not None and idempotency is None:
            raise ConfigError("idempotency_key= needs idempotency= (the store of processed keys)")
        timeout = durations.optional_seconds(handler_timeout, "handler_timeout", allow_zero=False)
        renewal = durations.seconds(max_lock_renewal, "max_lock_renewal")
        drain = durations.seconds(shutdown_timeout, "shutdown_timeout")
        lock = durations.optional_seconds(lock_timeout, "lock_timeout", allow_zero=False)
        wrap: Callable[[AsyncHandler], AsyncHandler] | None = None
        if idempotency is not None:
            from unimq.idempotency import idempotent

            def wrap(inner: AsyncHandler) -> AsyncHandler:
                return idempotent(inner, idempotency, idempotency_key)

        def open_consumer() -> Consumer:
            return self.consumer(destination, group, prefetch=prefetch or max(concurrency, 1) * 2, schema=schema,
                                 codec=codec, lock_timeout=lock_timeout)

        await run(
            open_consumer, handler, concurrency=concurrency, retry=retry or Retry(),
            shutdown_timeout=drain, handle_signals=handle_signals, stop=stop, kill_switch=kill_switch,
            handler_timeout=timeout, lock_timeout=lock, max_lock_renewal=renewal, wrap=wrap,
        )

    async def ensure(
        self,
        destination: str,
        spec: DestinationSpec | None = None,
        *,
        groups: Sequence[str] = (),
        partitions: int | None = None,
        replication: int | None = None,
        dead_letter: bool = True,
        deduplication: timedelta | float | None = None,
        fifo: bool | None = None,
        max_deliveries: int | None = None,
        lock_timeout: timedelta | float | None = None,
        retention: timedelta | float | None = None,
        max_priority: int | None = None,
        sessions: bool = False,
        dead_letter_expired: bool = False,
        temporary: bool = False,
    ) -> None:
        """Provision ``destination`` (its groups, dead-letter destination, …), or pass a ``DestinationSpec``.

        Every option the backend cannot honour is refused with a ``CapabilityError`` naming it,
        before any network call (``capabilities`` says which: partitions, replication, fifo,
        sessions, retention, lock_timeout, max_deliveries, deduplication, priority,
        dead_letter_expired: expired messages go to the dead-letter destination instead of vanishing;
        temporary: the broker removes it by itself once unused — prefer :meth:`temporary`).
        """
        self._check_open()
        if spec is None:
            try:
                spec = DestinationSpec(
                    groups=tuple(groups), partitions=partitions, replication=replication, dead_letter=dead_letter,
                    deduplication=_duration(deduplication, "deduplication"), fifo=fifo,
                    max_deliveries=max_deliveries, lock_timeout=_duration(lock_timeout, "lock_timeout"),
                    retention=_duration(retention, "retention"), max_priority=max_priority, sessions=sessions,
                    dead_letter_expired=dead_letter_expired, temporary=temporary,
                )
            except ValueError as exc:
                raise ConfigError(f"ensure({destination!r}): {_first_error(exc)}") from None
        check_spec(self._driver.capabilities_for(destination), destination, spec)
        await self._guard(self._driver.ensure(destination, spec), f"ensure {destination}")

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
        if not self.capabilities.listing:
            raise CapabilityError.unsupported(self.backend, "destinations()", "listing",
                                              "Keep the names in your configuration.")
        return await self._guard(self._driver.destinations(), "list destinations")

    async def request(
        self,
        destination: str,
        body: Any,
        *,
        timeout: timedelta | float = 30.0,
        schema: type[BaseModel] | None = None,
        **fields: Any,
    ) -> Any:
        """Send a request and wait for its reply: the reply ``Message``, or with ``schema`` the reply
        decoded into it. Replies come back on this broker's own reply destination (see
        :mod:`unimq.patterns`); ``unimq.Timeout`` if none arrives in time. ``fields`` are ``send()``'s."""
        self._check_open()
        seconds = durations.seconds(timeout, "timeout", allow_zero=False)
        request_schema = type(body) if isinstance(body, BaseModel) else None
        message = self.producer(destination, schema=request_schema).message(body, **fields)
        if self._requester is None:
            self._requester = Requester(self, self._driver)
        reply = await self._requester.request(destination, message, seconds)
        if schema is None:
            return reply
        try:
            return codec_for(schema, None).decode(reply.body)
        except Exception as exc:
            raise ConfigError(f"the reply to {message.message_id} is not a {schema.__name__}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def temporary(self, prefix: str = TEMPORARY_PREFIX, **spec: Any) -> AsyncIterator[str]:
        """A destination that exists for the ``async with`` block and is deleted after it (or swept
        by :meth:`sweep_temporary` if the process dies first). Where the ``temporary`` capability is
        native the broker also removes it by itself once unused (after a crash too)."""
        self._check_open()
        name = temporary_name(prefix)
        await self.ensure(name, temporary=self.capabilities_for(name).temporary.is_native, **spec)
        try:
            yield name
        finally:
            if not self._closed:
                await self.delete(name)

    async def sweep_temporary(self, older_than: timedelta | float = 3600.0) -> list[str]:
        """Delete temporary and reply destinations older than ``older_than`` (left by crashed processes)."""
        self._check_open()
        age = durations.seconds(older_than, "older_than")
        now = time.time()
        gone = []
        for name in await self.destinations():
            stamp = created_at(name)
            if stamp is not None and now - stamp > age:
                await self.delete(name)
                gone.append(name)
        return gone

    @property
    def late_replies(self) -> int:
        """Replies that arrived after their ``request()`` gave up (acked and dropped, never dead-lettered)."""
        return self._requester.late if self._requester is not None else 0

    async def _send_reply(self, destination: str, message: Message) -> Message:
        return await self.producer(destination).send(message)

    async def dead_letters(self, destination: str, group: str | None = None, count: int = 10) -> list[DeadLetter]:
        """Up to ``count`` dead letters of ``destination`` with reason, source, group, attempt and
        time, left in place. See :mod:`unimq.operations`."""
        self._check_open()
        return await operations.dead_letters(self, destination, group, count)

    async def redrive(
        self,
        destination: str,
        *,
        group: str | None = None,
        filter: Callable[[DeadLetter], bool] | None = None,
        limit: int | None = None,
        rate: float | None = None,
    ) -> RedriveReport:
        """Move dead letters back to ``destination`` without losing one (copy → confirm → remove)."""
        self._check_open()
        return await operations.redrive(self, destination, group=group, filter=filter, limit=limit, rate=rate)

    async def purge(self, destination: str, group: str | None = None, *, dead_letters: bool = False) -> int:
        """Empty ``destination`` (for ``group``), or its dead-letter destination; return how many went."""
        self._check_open()
        return await operations.purge(self, destination, group, dead_letters=dead_letters)

    async def health(self, timeout: float = 5.0) -> Health:
        """Is the broker answering, and how fast (``Health.ok``, ``Health.rtt_ms``)."""
        self._check_open()
        return await operations.health(self, timeout)

    async def delete(self, destination: str) -> None:
        """Remove ``destination`` and what ``ensure`` created for it."""
        self._check_open()
        await self._guard(self._driver.delete(destination), f"delete {destination}")

    async def close(self) -> None:
        if self._closed:
            return
        if self._requester is not None:
            await self._requester.close()
        self._closed = True
        for consumer in list(self._consumers):
            with contextlib.suppress(Exception):
                await consumer.close()
        try:
            await self._guard(self._driver.close(), "close")
        except BrokerConnectionError as exc:  # already lost: nothing is left to close
            log.info("closing %s: the connection was already lost: %s", self.url, exc)

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
        except UnimqError:
            raise
        except Exception as exc:
            raise self._driver.map_error(exc, context) from exc


def _duration(value: timedelta | float | None, field: str) -> timedelta | None:
    return None if value is None else durations.as_timedelta(value, field, allow_zero=False)


def _first_error(exc: ValueError) -> str:
    """One line from a pydantic ValidationError: the first field and what is wrong with it."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "value"
        return f"{where}: {first.get('msg', exc)}"
    return str(exc).splitlines()[0]


class Producer:
    """Sends to one destination. Safe to share between tasks."""

    def __init__(self, broker: Broker, destination: str, codec: Codec, retry: Retry | None, chain: Chain) -> None:
        self.destination = destination
        self._broker = broker
        self._driver = broker._driver
        self._codec = codec
        self._retry = retry
        self._caps = broker._driver.capabilities_for(destination)
        batch = self._caps.batch_send
        self._batch_size = int(batch.limit) if batch and batch.limit else (1 if not batch else 1000)
        self._keep_order = self._caps.ordering != "none"
        self._chain = chain if chain.publish else None
        self._closed = False

    def __repr__(self) -> str:
        return f"<unimq.Producer {self.destination!r} on {self._broker.backend}>"

    @property
    def capabilities(self) -> Capabilities:
        """The capabilities of this producer's destination."""
        return self._caps

    def message(self, body: Any, **fields: Any) -> Message:
        """The Message ``send(body, **fields)`` would send (encoded, id assigned), without sending it."""
        message = self._message(body, **fields)
        check_message(self._caps, message)
        return message

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
        delay: timedelta | float | None = None,
        ttl: timedelta | float | None = None,
        priority: int | None = None,
        subject: str | None = None,
    ) -> Message:
        """Send one message and wait until the broker has accepted it. Returns the sent Message.

        ``subject`` is a routing subject (``orders.eu.created``) that groups filter on."""
        if subject is not None:
            headers = {**(headers or {}), SUBJECT: check_subject(subject, pattern=False)}
        message = self._message(body, key, headers, message_id, correlation_id, reply_to, content_type,
                                delay, ttl, priority)
        failed = await self._publish([message])
        if failed:
            error = failed[0][1]
            if isinstance(error, AuthenticationError):
                raise error  # the credentials, not this message: the same class as a refused connect
            raise PublishError(f"send to {self.destination!r} failed: {error}", messages=[message],
                               results=[error], retryable=getattr(error, "retryable", False)) from error
        return message

    async def send_many(self, items: Iterable[Any]) -> list[Message]:
        """Send many messages with the backend's native batching, pipelined.

        Raises :class:`PublishError` whose ``results`` say, per message, which failed.
        """
        messages = [self._message(item) for item in items]
        checked = self._chain is None  # a middleware may shrink a body: check what it sends instead
        if checked:
            for message in messages:
                check_message(self._caps, message)
        size = self._batch_size
        chunks = [messages[i:i + size] for i in range(0, len(messages), size)]
        failures: list[tuple[Message, UnimqError]] = []
        if self._keep_order or len(chunks) == 1:
            for chunk in chunks:
                failures += await self._publish(chunk, checked=checked)
        else:
            gate = asyncio.Semaphore(PIPELINE_DEPTH)

            async def one(chunk: list[Message]) -> list[tuple[Message, UnimqError]]:
                async with gate:
                    return await self._publish(chunk, checked=checked)

            for result in await asyncio.gather(*(one(c) for c in chunks)):
                failures += result
        if failures:
            refused = next((e for _, e in failures if isinstance(e, AuthenticationError)), None)
            if refused is not None:
                raise refused
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
        delay: timedelta | float | None = None,
        ttl: timedelta | float | None = None,
        priority: int | None = None,
    ) -> Message:
        if isinstance(body, Message):
            message = body
            if not isinstance(self._codec, RawCodec) and not isinstance(message.body, bytes):
                message.body = self._codec.encode(message.body)
        else:
            if headers is not None and not isinstance(headers, dict):
                raise ConfigError(f"headers must be a dict of str to str, got {type(headers).__name__}")
            if delay is not None and not isinstance(delay, timedelta):
                delay = durations.as_timedelta(delay, "delay")
            if ttl is not None and not isinstance(ttl, timedelta):
                ttl = durations.as_timedelta(ttl, "ttl", allow_zero=False)
            # Positional, in Message's field order (keywords cost ~0.3 µs more per message here).
            message = Message(
                self._codec.encode(body), key, dict(headers) if headers else {},
                new_message_id() if message_id is None else message_id, correlation_id, reply_to,
                content_type or self._codec.content_type, None, delay, ttl, priority,
            )
            if self._codec.content_encoding:
                message.headers[CONTENT_ENCODING] = self._codec.content_encoding
        return message

    async def _publish(self, messages: list[Message], checked: bool = False) -> list[tuple[Message, UnimqError]]:
        """Publish, retrying retryable failures; return the (message, error) pairs that finally failed."""
        if self._chain is not None:
            return await self._publish_through(self._chain, messages)
        tel = telemetry.current
        if tel is None:
            return await self._publish_with_retry(messages, checked)
        with tel.publishing(self._broker.backend, self.destination, messages, bool(self._caps.headers)) as record:
            failed = await self._publish_with_retry(messages, checked)
            record.extend(failed)
        return failed

    async def _publish_through(self, chain: Chain, messages: list[Message]) -> list[tuple[Message, UnimqError]]:
        """Publish what the middlewares make of ``messages``; failures are reported as the originals."""
        try:
            sent = await chain.published(self.destination, messages)
        except UnimqError:
            raise
        except Exception as exc:
            raise PublishError(f"a middleware failed on the way to {self.destination!r}: {type(exc).__name__}: {exc}",
                               messages=messages) from exc
        original = {id(out): message for out, message in zip(sent, messages, strict=True)}
        tel = telemetry.current
        if tel is None:
            failed = await self._publish_with_retry(sent, False)
        else:
            with tel.publishing(self._broker.backend, self.destination, sent, bool(self._caps.headers)) as record:
                failed = await self._publish_with_retry(sent, False)
                record.extend(failed)
        return [(original[id(m)], e) for m, e in failed]

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
    for settlements before fetching more (backpressure, bounded memory). The receive and settle
    rules (expiry, max deliveries, dead-lettering, ack batching) are :mod:`unimq.settlement`'s.
    """

    def __init__(
        self,
        broker: Broker,
        destination: str,
        group: str | None,
        subscription: Subscription,
        settings: ReceiveSettings,
        codec: Codec,
        max_decoded_bytes: int,
        chain: Chain,
        wanted: Filter | None = None,
    ) -> None:
        self.destination = destination
        self.group = group
        self._broker = broker
        self._settings = settings
        self._prefetch = settings.prefetch
        self._lock = settings.lock_timeout
        self._codec = codec
        self._decode = not isinstance(codec, RawCodec)
        self._chain = chain if chain.receive else None
        #: Deliveries need no decoding step unless they are compressed: __anext__'s fast path.
        self._plain = not self._decode and self._chain is None
        self._max_decoded = max_decoded_bytes
        self._acked = chain.acked
        self._wanted = wanted
        self._buffer: deque[Delivery] = deque()
        self._attach(subscription)
        self._unsettled = 0
        self._room: asyncio.Future[None] | None = None
        self._receive_failures = 0
        self._opened = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<unimq.Consumer {self.destination!r} group={self.group!r} on {self._broker.backend}>"

    def _attach(self, subscription: Subscription) -> None:
        """Read and settle through ``subscription``; its driver's discard_unread() reaches the buffer."""
        driver = self._broker._driver
        self._sub = subscription
        self._settlement = Settlement(driver, subscription, driver.capabilities_for(self.destination), self.destination,
                                      self.group, self._release, self._acked, self._wanted, self._broker._send_reply)
        subscription._unread = self._buffer

    @property
    def subscription(self) -> Subscription:
        """The driver's reader (escape hatch)."""
        return self._sub

    @property
    def broker(self) -> Broker:
        return self._broker

    @property
    def capabilities(self) -> Capabilities:
        """The capabilities of this consumer's destination."""
        return self._broker.capabilities_for(self.destination)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lock_timeout(self) -> float | None:
        """Seconds an unsettled message stays invisible to others, as far as known (None: unknown)."""
        options_lock = getattr(self._broker._driver.options, "lock_timeout", None)
        return self._lock or self._sub.lock_timeout or (options_lock if isinstance(options_lock, float | int) else None)

    async def open(self) -> Consumer:
        if self._closed:
            raise Closed(f"consumer of {self.destination!r} is closed")
        if not self._opened:
            self._broker._check_open()
            try:
                await self._broker._guard(self._sub.open(), f"open consumer of {self.destination}")
            except BaseException:
                await self._abandon_reader()
                raise
            self._opened = True
            self._broker._consumers.add(self)
        return self

    async def _abandon_reader(self) -> None:
        """An open() that failed or was cancelled may have started a client half-way (a poll task, a
        group member holding partitions): close that reader, shielded and quietly, so nothing runs on
        unowned; a fresh one waits for the next open(). Nothing was received through it yet."""
        failed = self._sub
        self._attach(self._broker._driver.subscription(self.destination, self.group, self._settings))
        with contextlib.suppress(Exception):
            await asyncio.shield(self._broker._guard(failed.close(), f"close consumer of {self.destination}"))

    async def close(self) -> None:
        """Stop receiving: queued acks are sent, then messages not yet settled become redeliverable."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._broker._consumers.discard(self)
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        if self._opened:
            try:
                await self._settlement.flush()
            finally:
                # Closed even when this close is cancelled (a task cancelled on its way out of
                # ``async with``): the driver's reader and its background fetcher would run on.
                await asyncio.shield(self._broker._guard(self._sub.close(), f"close consumer of {self.destination}"))

    async def __aenter__(self) -> Consumer:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Delivery:
        buffer = self._buffer
        if buffer and self._plain and telemetry.current is None:
            # The per-message hot path: a buffered delivery that needs no decoding, without the
            # nested await of _next (which does the same for every other case).
            first = buffer[0]
            if CONTENT_ENCODING not in first.message.headers:
                buffer.popleft()
                self._unsettled += 1
                return first
        if self._closed:
            raise StopAsyncIteration
        delivery = await self._next(None)
        if delivery is None:
            raise StopAsyncIteration
        return delivery

    async def receive(self, timeout: timedelta | float | None = None) -> Delivery | None:
        """The next delivery, or None if none arrives within ``timeout`` (None waits forever; 0 polls)."""
        seconds = durations.optional_seconds(timeout, "receive(timeout=)")
        if self._closed:
            raise Closed(f"consumer of {self.destination!r} is closed")
        return await self._next(seconds)

    async def receive_many(self, count: int, timeout: timedelta | float) -> list[Delivery]:
        """Up to ``count`` deliveries, waiting at most ``timeout`` in all (0: what is waiting now).

        Cancelling it loses nothing: deliveries already taken go back to the front of the buffer.
        """
        _check_count(count, "receive_many(count)")
        seconds = durations.seconds(timeout, "receive_many(timeout=)")
        if self._closed:
            raise Closed(f"consumer of {self.destination!r} is closed")
        deadline = time.monotonic() + seconds
        out: list[Delivery] = []
        try:
            out += await self._take(count)
            while len(out) < count:
                # _next fetches the next batch into the buffer and returns its first delivery; the
                # rest of the batch is taken in one pass rather than one receive() per message.
                delivery = await self._next(max(0.0, deadline - time.monotonic()))
                if delivery is None:
                    break
                out.append(delivery)
                out += await self._take(count - len(out))
        except asyncio.CancelledError:
            self._give_back(out)
            raise
        return out

    async def receive_batch(self, max_messages: int, timeout: timedelta | float) -> list[Delivery]:
        """Wait up to ``timeout`` for one delivery, then return it with what is already buffered.

        The batch-processing call (like Kafka's ``getmany`` or a JetStream fetch): it never waits
        to fill the batch, so a consumer settles what it has while the next batch is fetched.
        """
        _check_count(max_messages, "receive_batch(max_messages)")
        first = await self.receive(durations.seconds(timeout, "receive_batch(timeout=)"))
        if first is None:
            return []
        return [first, *await self._take(max_messages - 1)]

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries at once, in one round trip where the backend allows."""
        pending = [d for d in deliveries if not d.settled]
        for delivery in pending:
            if not isinstance(delivery, Delivery) or delivery._settler is not self._settlement:
                raise ConfigError("ack_many takes deliveries received by this consumer")
        for delivery in pending:
            delivery.settled = True
        await self._settlement.ack_many(pending)

    def _give_back(self, deliveries: list[Delivery]) -> None:
        """Put deliveries a cancelled call had taken back at the front of the buffer."""
        if deliveries:
            self._buffer.extendleft(reversed(deliveries))
            self._unsettled -= len(deliveries)

    async def _take(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` buffered deliveries, decoded; those that fail to decode are dead-lettered."""
        buffer = self._buffer
        out: list[Delivery] = []
        while buffer and len(out) < limit:
            delivery = buffer.popleft()
            needs_decoding = self._decode or self._chain or CONTENT_ENCODING in delivery.message.headers
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
        polled = False
        while True:
            while buffer:
                delivery = buffer.popleft()
                needs_decoding = self._decode or self._chain or CONTENT_ENCODING in delivery.message.headers
                if needs_decoding and not await self._decode_payload(delivery):
                    continue
                self._unsettled += 1
                if telemetry.current is not None:
                    telemetry.current.received(self._broker.backend, self.destination, self.group, delivery)
                return delivery
            if self._closed:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0 and polled:
                return None
            room = self._prefetch - self._unsettled
            if room <= 0:
                if remaining is not None and remaining <= 0:
                    return None
                await self._wait_for_room(remaining)
                continue
            wait = 1.0 if remaining is None else max(0.0, min(1.0, remaining))
            polled = True
            try:
                batch = await self._sub.receive(room, wait)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed or self._broker._closed:
                    return None  # an error seen after close ends the loop; it is not the caller's
                error = exc if isinstance(exc, UnimqError) else self._broker._driver.map_error(
                    exc, f"receive from {self.destination}")
                # A lost connection is not the caller's problem: the driver reconnects on the next
                # receive, so back off and try again (until the caller's timeout, if any).
                if not error.retryable:
                    raise error from (None if error is exc else exc)
                self._receive_failures += 1
                pause = RECEIVE_RETRY.backoff(self._receive_failures)
                log.warning("receive from %r failed (%d in a row), retrying in %.2fs: %s",
                            self.destination, self._receive_failures, pause, error)
                await asyncio.sleep(pause if remaining is None else max(0.0, min(pause, remaining)))
                continue
            self._receive_failures = 0
            if batch:
                buffer.extend(await self._settlement.admit(batch))
            # One step for the event loop per fetch, so a loop over an in-process broker that
            # always has a message ready (nack, receive, nack, ...) cannot starve other tasks.
            await asyncio.sleep(0)
            _raise_if_cancelling()

    async def _wait_for_room(self, timeout: float | None) -> None:
        # One future shared by every task waiting on this consumer, so a settlement wakes them all.
        room = self._room
        if room is None or room.done():
            room = self._room = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(room)

    def _release(self, settled: int) -> None:
        """``settled`` deliveries no longer count against prefetch: wake whoever waits for room."""
        self._unsettled -= settled
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    async def _decode_payload(self, delivery: Delivery) -> bool:
        """Decode the body; a payload that fails is dead-lettered with the error as reason.

        A message that was dead-lettered already (it carries a reason) is handed over undecoded
        instead, so reading a dead-letter destination never bounces a message on to another one.
        """
        delivery._settler = self._settlement
        try:
            if self._chain is not None:
                delivery.wire = delivery.message
                await self._chain.received(self.destination, delivery)
            message = delivery.message
            body = message.body
            encoding = message.headers.get(CONTENT_ENCODING)
            if encoding:
                body = decompress(body, encoding, self._max_decoded)
            delivery.payload = self._codec.decode(body) if self._decode else body
            return True
        except Nack as nack:
            self._unsettled += 1
            log.info("message %s handed back by a middleware: %s", delivery.message.message_id, nack.reason)
            await self._settlement.nack(delivery, nack.delay)
            return False
        except Exception as exc:
            message = delivery.message
            if DEAD_LETTER_REASON in message.headers:
                log.warning("dead-lettered message %s does not decode (%s); handing it over undecoded",
                            message.message_id, exc)
                delivery.payload = message.body
                return True
            self._unsettled += 1
            reason = f"payload failed to decode: {type(exc).__name__}: {exc}"
            try:
                await self._settlement.reject(delivery, reason)
            except CapabilityError:
                log.error("message %s dropped: %s (%s has no dead-letter destination)", message.message_id,
                          reason, self._broker.backend)
                wait = self._settlement.ack(delivery)
                if wait is not None:
                    await wait
            return False


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation that a client library swallowed (CPython 3.11's ``wait_for`` can
    return a result instead of raising when cancelled in the same step): what was received stays
    in the buffer, and the task ends as its caller asked."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _check_count(count: object, field: str) -> None:
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ConfigError(f"{field} must be an int >= 1, got {count!r}")


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
        url = self._url
        if url is None:
            url = os.environ.get("UNIMQ_URL")
            if url is None:
                _log_default_once()
                url = DEFAULT_URL
        if not isinstance(url, str) or not url.strip():
            raise ConfigError("connect(): the broker URL is empty (an unset environment variable?). "
                              "Pass a URL such as 'kafka://host:9092', or call connect() with no argument "
                              "for $UNIMQ_URL or the embedded memory://")
        parsed = parse_url(url)
        query = {**parsed.query, **self._options}
        client = query.pop("client", None)
        if client is not None and not isinstance(client, str):
            raise ConfigError(f"client= must be a name such as 'confluent', got {type(client).__name__}")
        driver_cls = registry.load(parsed.scheme, client)
        options = parse_options(driver_cls.Options, driver_cls.name, query)
        driver = driver_cls(parsed, options)
        if self._require:
            driver.capabilities.require(self._require)
        try:
            await driver.open()
        except UnimqError:
            raise
        except Exception as exc:
            raise driver.map_error(exc, f"connecting to {parsed.redacted()}") from exc
        if self._require:  # what an endpoint can do may only be known once connected (Service Bus)
            try:
                driver.capabilities.require(self._require)
            except UnimqError:
                await driver.close()
                raise
        return Broker(driver, parsed)


_DEFAULT_LOGGED = False


def _log_default_once() -> None:
    global _DEFAULT_LOGGED  # noqa: PLW0603 - one log line per process
    if not _DEFAULT_LOGGED:
        _DEFAULT_LOGGED = True
        logging.getLogger("unimq").info("connect(): no URL and no $UNIMQ_URL, using the embedded memory:// broker")


def connect(url: str | None = None, *, require: Iterable[str] = (), **options: Any) -> _Connect:
    """Connect to the broker at ``url`` (default: ``$UNIMQ_URL``, else ``memory://``).

    ``require`` names capabilities that must not be ``none``; ``options`` override the URL's query
    parameters. Use as ``broker = await connect(...)`` or ``async with connect(...) as broker``.
    """
    return _Connect(url, require, options)

