"""A consumer-group reader of one topic and its group's retry topic.

A background task polls aiokafka independently of the handlers and turns records into
deliveries in the core's read-ahead buffer (:class:`unimq.readahead.ReadAhead`), which ``receive``
drains; the core bounds what the application holds unsettled (``prefetch``), and the buffer holds at
most ``prefetch`` more (refilled a batch at a time, once half empty), so the next fetch overlaps the
processing of the current one. A full buffer does not pause partitions — aiokafka drops a paused
partition's fetched records, which then cost a refetch — because aiokafka already holds at most
one fetch per partition. Only a stall long enough to threaten ``max_poll_interval`` pauses every
partition and polls (empty), so a slow handler never makes the consumer leave its group.

Emulations, all on the group's retry topic ``<topic>.retry.<group>`` (subscribed alongside the
topic): the core's redelivery copy of a nack is published there (:meth:`redeliver`); a main-topic
record whose ``x-unimq-not-before`` is in the future (delayed send) is moved there by each group; a
retry record not yet due makes its partition seek back and pause until it is due, so other
partitions keep flowing. Acks only move offsets in memory (the poll loop commits). Expiry,
``max_deliveries`` and dead-lettering are the core's: this reader only reports
``x-unimq-expires-at`` as ``Delivery.expires_at`` and reads the limit that ``ensure()`` stored in
the ``__unimq_meta`` topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

from unimq.driver import AckBatch, Driver, ReceiveSettings, Subscription
from unimq.errors import PublishError
from unimq.message import Delivery, Message
from unimq.readahead import ReadAhead
from unimq.reliability import EXPIRES_AT, NOT_BEFORE, attempt_from_headers, epoch_ms, redelivery_copy
from unimq_kafka.mapping import from_record
from unimq_kafka.offsets import OffsetTracker

if TYPE_CHECKING:
    from unimq_kafka.driver import KafkaDriver

log = logging.getLogger("unimq.kafka")

#: How long one poll waits for records; bounds the latency of pause/resume and commits.
POLL_MS = 100
#: How long open() waits for the group to assign partitions before it returns anyway.
JOIN_TIMEOUT = 10.0
#: How long a rebalance waits for in-flight messages of revoked partitions without lock_timeout;
#: those still held then are handed back (redelivered as the next attempt).
REVOKE_WAIT = 5.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscription) -> None:
        self._sub = sub

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._sub._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._sub._on_assigned(assigned)


class RetryTopicSubscription(Subscription):
    """What both Kafka drivers (aiokafka, librdkafka) settle through the group's retry topic: a
    nack's redelivery copy, and the unsettled messages a consumer gives up (close, revoke timeout)."""

    native_nack = False
    _driver: Driver
    _topic: str
    retry_topic: str
    #: Deliveries handed to the core and not yet settled.
    _inflight: set[Delivery]

    async def redeliver(self, copy: Message, delay: float | None) -> None:
        """The group's retry topic holds the copy until its not-before time."""
        (error,) = await self._driver.publish(self.retry_topic, [copy])
        if error is not None:
            raise PublishError(f"could not republish {copy.message_id} to {self.retry_topic!r}: {error}",
                               messages=[copy], results=[error]) from error

    async def _hand_back(self, deliveries: list[Delivery]) -> None:
        """Unsettled messages we give up: republished to the retry topic as the next attempt (left to
        the offsets they would come back as attempt 1). A failure leaves them to the offsets
        (redelivered all the same)."""
        held = [d for d in deliveries if d in self._inflight and not d.settled and not d.token.revoked]
        if not held:
            return
        copies = [redelivery_copy(d.message, d.attempt + 1, None) for d in held]
        try:
            results = await self._driver.publish(self.retry_topic, copies)
        except Exception as exc:
            log.warning("kafka: could not hand back %d messages of %r: %s", len(held), self._topic, exc)
            return
        await self.ack_many([d for d, error in zip(held, results, strict=True) if error is None])


class KafkaSubscription(RetryTopicSubscription):
    #: An ack only moves an offset in memory, but batched the core spends no coroutine per ack.
    ack_batch = AckBatch(max_batch=1000, max_in_flight=1)
    _driver: KafkaDriver

    def __init__(self, driver: KafkaDriver, topic: str, group: str | None, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._topic = topic
        self._group = group
        self.group_id = driver.group_id(topic, group)
        self.retry_topic = driver.retry_topic(topic, group)
        self._start = settings.start
        self._prefetch = settings.prefetch
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._ahead = ReadAhead(self._prefetch, self._room.set)
        self._inflight: set[Delivery] = set()
        # Bounded so that the other members' JoinGroup requests (request_timeout) do not time out.
        opts = driver.options
        self._request_timeout_ms = max(opts.request_timeout_ms, opts.session_timeout_ms + 5000)
        self._revoke_wait = min(settings.lock_timeout or REVOKE_WAIT, opts.max_poll_interval_ms / 1000 * 0.8,
                                self._request_timeout_ms / 1000 - 5)
        self._trackers: dict[TopicPartition, OffsetTracker] = {}
        self._held: dict[TopicPartition, asyncio.TimerHandle] = {}
        self._keepalive = driver.options.max_poll_interval_ms / 1000 / 3
        self._paused = False
        self._assigned = asyncio.Event()
        self._dirty = False
        self._stopping = False

    @property
    def native(self) -> Any:
        """The AIOKafkaConsumer (after open)."""
        return self._consumer

    async def open(self) -> None:
        driver = self._driver
        opts = driver.options
        await driver.prepare_topics(self._topic, self.retry_topic)
        self.max_deliveries = await driver.max_deliveries_of(self._topic)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=driver.bootstrap,
            client_id=opts.client_id,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=opts.session_timeout_ms,
            heartbeat_interval_ms=opts.heartbeat_interval_ms,
            max_poll_interval_ms=opts.max_poll_interval_ms,
            rebalance_timeout_ms=opts.max_poll_interval_ms,
            fetch_max_wait_ms=opts.fetch_max_wait_ms,
            request_timeout_ms=self._request_timeout_ms,
            **driver.security_kwargs(),
        )
        self._consumer.subscribe([self._topic, self.retry_topic], listener=_Listener(self))
        # start() waits for the group's assignment without a bound, and a rebalance waits for the
        # other members' revokes, which wait for their in-flight messages: bound that wait here
        # (the poll loop finishes it), or this open() would last until they give the messages up.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + JOIN_TIMEOUT
        starting = asyncio.create_task(self._consumer.start())
        try:
            done, _ = await asyncio.wait({starting}, timeout=JOIN_TIMEOUT)
            if done:
                starting.result()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._assigned.wait()
        except BaseException:
            starting.cancel()  # the core closes this reader next, which stops the client
            raise
        if not self._assigned.is_set():
            log.warning("kafka: group %r got no assignment within %.0fs; continuing", self.group_id, JOIN_TIMEOUT)
        self._task = asyncio.create_task(self._poll(starting), name=f"unimq-kafka-poll-{self._topic}")

    # Rebalance callbacks (awaited by aiokafka's coordinator during the rebalance).

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Stop handing out the partitions' records, ours or those the core holds unread (their next
        owner reads them), let the messages being processed finish for up to ``lock_timeout``
        (default REVOKE_WAIT), then commit."""
        leaving = {tp: tracker for tp in revoked if (tracker := self._trackers.pop(tp, None)) is not None}
        gone = {id(tracker) for tracker in leaving.values()}
        self._ahead.discard(lambda d: id(d.token) in gone)
        self._inflight.difference_update(self.discard_unread(lambda d: id(d.token) in gone))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._revoke_wait
        while any(id(d.token) in gone for d in self._inflight):
            if loop.time() >= deadline:
                await self._hand_back([d for d in self._inflight if id(d.token) in gone])
                break
            await asyncio.sleep(0.02)
        offsets: dict[TopicPartition, int] = {}
        for tp, tracker in leaving.items():
            tracker.revoked = True
            offset = tracker.committable()
            if offset is not None:
                offsets[tp] = offset
        for tp in revoked:
            handle = self._held.pop(tp, None)
            if handle is not None:
                handle.cancel()
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except Exception as exc:
                log.warning("kafka: commit on revoke for group %r failed: %s", self.group_id, exc)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self._trackers[tp] = OffsetTracker()
        try:
            await self._apply_start([tp for tp in assigned if tp.topic == self._topic])
        finally:
            self._assigned.set()

    async def _apply_start(self, partitions: list[TopicPartition]) -> None:
        """Position partitions the group has no committed offset for, and anchor them with a commit."""
        start = self._start if self._start is not None else self._driver.options.auto_offset_reset
        if start == "earliest" or not partitions:
            return
        consumer = self._consumer
        fresh = [tp for tp in partitions if await consumer.committed(tp) is None]
        if not fresh:
            return
        if start == "latest":
            await consumer.seek_to_end(*fresh)
        elif isinstance(start, datetime):
            found = await consumer.offsets_for_times({tp: int(start.timestamp() * 1000) for tp in fresh})
            late = [tp for tp in fresh if found.get(tp) is None]
            for tp in fresh:
                if found.get(tp) is not None:
                    consumer.seek(tp, found[tp].offset)
            if late:
                await consumer.seek_to_end(*late)
        elif isinstance(start, int):
            for tp in fresh:
                consumer.seek(tp, start)
        await consumer.commit({tp: await consumer.position(tp) for tp in fresh})

    # The poll loop.

    async def _poll(self, starting: asyncio.Task[None]) -> None:
        try:
            await starting
        except Exception as exc:
            self._ahead.fail(self._driver.map_error(exc, f"joining group {self.group_id}"))
            return
        consumer = self._consumer
        interval = self._driver.options.commit_interval_ms / 1000
        last_commit = last_poll = time.monotonic()
        while not self._stopping:
            try:
                if self._ahead.full:
                    if time.monotonic() - last_poll >= self._keepalive:
                        # Full for long: poll (empty) so the group keeps this member.
                        consumer.pause(*consumer.assignment())
                        self._paused = True
                        await consumer.getmany(timeout_ms=0)
                        last_poll = time.monotonic()
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await self._room.wait()
                else:
                    if self._paused:
                        consumer.resume(*(tp for tp in consumer.assignment() if tp not in self._held))
                        self._paused = False
                    batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=self._prefetch)
                    last_poll = time.monotonic()
                    if batch:
                        await self._accept(batch)
                if self._dirty and time.monotonic() - last_commit >= interval:
                    last_commit = time.monotonic()
                    await self._commit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                mapped = self._driver.map_error(exc, f"consuming {self._topic}")
                if not mapped.retryable:
                    self._ahead.fail(mapped)
                    return
                log.warning("kafka: poll of %r failed, retrying: %s", self._topic, mapped)
                await asyncio.sleep(1.0)

    async def _accept(self, batch: dict[TopicPartition, list[Any]]) -> None:
        now_ms = time.time() * 1000
        ahead = self._ahead
        append = ahead.append
        retry_topic = self.retry_topic
        for tp, records in batch.items():
            tracker = self._trackers.get(tp)
            if tracker is None:
                continue
            track = tracker.track
            for record in records:
                message = from_record(record)
                offset = record.offset
                headers = message.headers
                if headers:
                    due = epoch_ms(headers, NOT_BEFORE)
                    if due > now_ms:
                        if tp.topic == retry_topic:
                            self._hold(tp, offset, (due - now_ms) / 1000)
                            break
                        track(offset)
                        await self._defer(record, tracker, tp)
                        continue
                    attempt = attempt_from_headers(message)
                    expires = epoch_ms(headers, EXPIRES_AT) / 1000
                else:
                    attempt, expires = 1, 0.0
                track(offset)
                # token: the partition's tracker; the offset to ack is native.offset (no tuple per record)
                append(Delivery(message, attempt, record, tracker, expires))
        ahead.notify()

    def _hold(self, tp: TopicPartition, offset: int, seconds: float) -> None:
        """A retry record is not due: rewind to it and pause its partition until it is."""
        consumer = self._consumer
        consumer.seek(tp, offset)
        consumer.pause(tp)
        previous = self._held.pop(tp, None)
        if previous is not None:
            previous.cancel()
        self._held[tp] = asyncio.get_running_loop().call_later(seconds, self._release, tp)

    def _release(self, tp: TopicPartition) -> None:
        self._held.pop(tp, None)
        if tp in self._trackers and not self._paused:
            self._consumer.resume(tp)

    async def _defer(self, record: Any, tracker: OffsetTracker, tp: TopicPartition) -> None:
        """A delayed send reached the topic: move it, bytes and headers as they are, to the retry topic."""
        future = await self._driver.producer.send(
            self.retry_topic, record.value, key=record.key, headers=list(record.headers)
        )

        def moved(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                log.warning("kafka: could not defer a delayed message of %r; delivering it now", self._topic)
                message = from_record(record)
                expires = epoch_ms(message.headers, EXPIRES_AT) / 1000
                self._ahead.extend([Delivery(message, attempt_from_headers(message), record, tracker, expires)])
            else:
                tracker.ack(record.offset)
                self._dirty = True

        future.add_done_callback(moved)

    async def _commit(self) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp, tracker in self._trackers.items():
            offset = tracker.committable()
            if offset is not None:
                offsets[tp] = offset
        self._dirty = False
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except Exception as exc:
            self._dirty = True
            mapped = self._driver.map_error(exc, f"commit for group {self.group_id}")
            log.warning("kafka: %s; will retry", mapped)
            return
        for tp, offset in offsets.items():
            current = self._trackers.get(tp)
            if current is not None:
                current.committed(offset)

    # The Subscription interface.

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        out = await self._ahead.take(max_messages, timeout)
        self._inflight.update(out)
        return out

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One loop over offsets: no commit or wake-up per message (the poll loop commits)."""
        inflight = self._inflight
        for delivery in deliveries:
            delivery.token.ack(delivery.native.offset)
            inflight.discard(delivery)
        self._dirty = True

    async def close(self) -> None:
        if self._task is not None:
            # The flag as well as cancel(): a client library may swallow a cancellation.
            self._stopping = True
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=POLL_MS / 1000 * 20)
        for handle in self._held.values():
            handle.cancel()
        self._held.clear()
        self._ahead.clear()
        await self._hand_back(list(self._inflight))
        if self._consumer is not None:
            try:
                await self._commit()
            finally:
                await self._stop_consumer()

    async def _stop_consumer(self) -> None:
        """Stop aiokafka; its fetcher re-raises the cancellation of its own in-flight fetch
        (seen when a connection dropped just before close), which is not the caller's."""
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.debug("kafka: consumer of %r stopped while a fetch was being retried", self._topic)

