"""``kafka://host:9092?client=confluent``: Kafka through librdkafka (confluent-kafka).

The data path — producing and consuming — runs on librdkafka's C clients; administration
(``ensure``, ``stats``, ``peek``, ``delete``, listing, the ``__unimq_meta`` topic that carries
``max_deliveries`` to every process) is delegated to the aiokafka driver of ``unimq-kafka``, so both
drivers name topics and groups alike, keep the same metadata and interoperate on one cluster.

librdkafka's clients block: a dedicated thread serves the producer's delivery reports
(:class:`_Reports`), each consumer has its own poll thread (:mod:`unimq_kafka_confluent.subscription`),
and the event loop only ever makes non-blocking calls (``produce`` into librdkafka's queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import BaseModel
from unimq_kafka.driver import ERRORS as AIOKAFKA_ERRORS
from unimq_kafka.driver import KafkaDriver
from unimq_kafka.mapping import timestamp_ms, to_headers, to_key

from unimq.capabilities import Capabilities, native
from unimq.driver import DestinationSpec, Driver, ReceiveSettings, Stats, Subscription
from unimq.errors import (
    AuthenticationError,
    BrokerConnectionError,
    Closed,
    ConfigError,
    ErrorRule,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    Timeout,
    register_secret,
)
from unimq.message import Message
from unimq.url import BrokerURL
from unimq_kafka_confluent.options import ConfluentKafkaOptions
from unimq_kafka_confluent.subscription import ConfluentSubscription

log = logging.getLogger("unimq.kafka")

#: How long the report thread waits in one ``poll``; bounds how late close notices.
POLL_SECONDS = 0.1
#: Records produced before ``publish`` yields to the event loop once.
YIELD_EVERY = 1000
#: Longest close waits for records still in librdkafka's queue.
FLUSH_SECONDS = 10.0


def _code(*codes: int) -> Callable[[BaseException], bool]:
    """Match a KafkaException by librdkafka error code."""

    def match(exc: BaseException) -> bool:
        error = exc.args[0] if exc.args else None
        return isinstance(error, KafkaError) and error.code() in codes

    return match


def _retriable(exc: BaseException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and bool(error.retriable())


#: librdkafka errors first, then the aiokafka driver's table (administration runs through it).
ERRORS: tuple[ErrorRule, ...] = (
    (KafkaException, AuthenticationError, _code(KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED)),
    (KafkaException, PermissionDenied, _code(KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                             KafkaError.GROUP_AUTHORIZATION_FAILED,
                                             KafkaError.CLUSTER_AUTHORIZATION_FAILED)),
    (KafkaException, NotFound, _code(KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                                     KafkaError._UNKNOWN_PARTITION)),
    (KafkaException, MessageTooLarge, _code(KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)),
    (KafkaException, Timeout, _code(KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT)),
    (KafkaException, BrokerConnectionError, _code(KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                                                  KafkaError._RESOLVE, KafkaError.NETWORK_EXCEPTION)),
    (KafkaException, ConfigError, _code(KafkaError._INVALID_ARG, KafkaError.INVALID_CONFIG,
                                        KafkaError.POLICY_VIOLATION)),
    (KafkaException, Closed, _code(KafkaError._DESTROY)),
    (KafkaException, BrokerConnectionError, _retriable),
    *AIOKAFKA_ERRORS,
)


class _Batch:
    """Delivery reports of one ``publish`` call: resolved on the event loop once all arrived."""

    __slots__ = ("_lock", "future", "loop", "remaining", "results")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = count
        self.results: list[Any] = [None] * count
        self._lock = threading.Lock()

    def report(self, index: int, error: Any, _record: Any = None) -> None:
        """librdkafka's delivery callback (report thread), or a refusal at produce (event loop)."""
        if error is not None:
            self.results[index] = error
        with self._lock:
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody awaits the batch
                self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class _Reports(threading.Thread):
    """Serves the producer's delivery reports: ``poll`` is the only call that runs them."""

    def __init__(self, producer: Any) -> None:
        super().__init__(name="unimq-kafka-confluent-reports", daemon=True)
        self._producer = producer
        self.stopping = False

    def run(self) -> None:
        poll = self._producer.poll
        while not self.stopping:
            poll(POLL_SECONDS)


class ConfluentKafkaDriver(Driver):
    name = "kafka"
    Options: ClassVar[type[BaseModel]] = ConfluentKafkaOptions
    errors: ClassVar[Sequence[ErrorRule]] = ERRORS
    options: ConfluentKafkaOptions

    def __init__(self, url: BrokerURL, options: ConfluentKafkaOptions) -> None:
        if url.username and options.sasl_username is None:
            options = options.model_copy(update={"sasl_username": url.username, "sasl_password": url.password})
        register_secret(options.sasl_password)
        register_secret(options.ssl_password)
        super().__init__(url, options)
        #: The aiokafka driver this one administers topics, groups and metadata through.
        self.kafka = KafkaDriver(url, options.aiokafka_options())
        self.bootstrap = self.kafka.bootstrap
        self._producer: Any = None
        self._reports: _Reports | None = None
        base = self.kafka.capabilities
        self._caps = base.model_copy(update={
            "persistence": native(note="replicated log; acks=all and the idempotent producer by default "
                                       "(librdkafka)"),
        })

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def native(self) -> Any:
        """The confluent_kafka.Producer. Administration: ``driver.kafka`` (the aiokafka driver)."""
        return self._producer

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by the producer and the consumers."""
        opts = self.options
        return {"bootstrap.servers": self.bootstrap, "client.id": opts.client_id, "log_level": 3,
                "logger": log, **opts.security_config()}

    @property
    def producer(self) -> Any:
        if self._producer is None:
            raise Closed("kafka: the broker is not open")
        return self._producer

    async def open(self) -> None:
        """Connect the administration client first: it tells a wrong password or an unreachable
        host at once, where librdkafka only logs it and retries."""
        await self.kafka.open()
        opts = self.options
        config = {
            **self.client_config(),
            "acks": "all" if opts.acks in ("all", "-1") else opts.acks,
            "enable.idempotence": opts.enable_idempotence,
            "linger.ms": opts.linger_ms,
            "batch.size": opts.max_batch_size,
            "batch.num.messages": opts.batch_num_messages,
            "queue.buffering.max.messages": opts.queue_buffering_max_messages,
            "message.max.bytes": opts.max_request_size,
            "request.timeout.ms": opts.request_timeout_ms,
            "message.timeout.ms": max(opts.request_timeout_ms * 2, opts.linger_ms + 1000),
            # Java's murmur2 (random when unkeyed), so a key lands where every other client puts it.
            "partitioner": "murmur2_random",
        }
        if opts.compression_type:
            config["compression.type"] = opts.compression_type
        try:
            self._producer = Producer(config)
        except BaseException:
            await self.kafka.close()
            raise
        self._reports = _Reports(self._producer)
        self._reports.start()

    async def close(self) -> None:
        producer, reports = self._producer, self._reports
        self._producer = self._reports = None
        try:
            if reports is not None:
                reports.stopping = True
                await asyncio.to_thread(reports.join)
            if producer is not None:
                left = await asyncio.to_thread(producer.flush, FLUSH_SECONDS)
                if left:
                    log.warning("kafka: %d records were still unsent at close", left)
        finally:
            await self.kafka.close()

    # Publishing.

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        """Queue every record in librdkafka (non-blocking), then await one future for the batch."""
        produce = self.producer.produce
        batch = _Batch(asyncio.get_running_loop(), len(messages))
        report = batch.report
        for index, message in enumerate(messages):
            while True:
                try:
                    produce(destination, message.body, to_key(message), on_delivery=partial(report, index),
                            timestamp=timestamp_ms(message) or 0, headers=to_headers(message))
                    break
                except BufferError:  # librdkafka's queue is full: let the report thread drain it
                    await asyncio.sleep(0.005)
                except KafkaException as exc:
                    report(index, exc.args[0] if exc.args else exc)
                    break
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        await batch.future
        return [None if error is None else self._publish_error(error, destination) for error in batch.results]

    def _publish_error(self, error: Any, destination: str) -> BaseException:
        exc = error if isinstance(error, BaseException) else KafkaException(error)
        return self.map_error(exc, f"publish to {destination}")

    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        return ConfluentSubscription(self, destination, group, settings)

    # Administration: the aiokafka driver's.

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:
        await self.kafka.ensure(destination, spec)

    async def stats(self, destination: str, group: str | None) -> Stats:
        return await self.kafka.stats(destination, group)

    async def peek(self, destination: str, count: int) -> list[Message]:
        return await self.kafka.peek(destination, count)

    async def destinations(self) -> list[str]:
        return await self.kafka.destinations()

    async def delete(self, destination: str) -> None:
        await self.kafka.delete(destination)

    def dead_letter_destination(self, destination: str) -> str:
        return self.kafka.dead_letter_destination(destination)
