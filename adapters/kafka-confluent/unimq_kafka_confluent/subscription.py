"""A consumer-group reader of one topic and its group's retry topic, on librdkafka.

The same semantics as the aiokafka driver's reader (:mod:`unimq_kafka.subscription`), on a
blocking client: a dedicated poll thread calls ``consume``, turns records into deliveries and
appends them to a buffer that ``receive`` drains on the event loop (a wake-up only when a receive
waits for records). The buffer is short: the thread takes at most ``READ_AHEAD`` records per turn
(and at most ``prefetch``) and waits for room once it is over half full, so converted deliveries
die young; librdkafka's own queue, bounded by ``queued_max_messages_kbytes``, is the read-ahead.
A stall long enough to threaten ``max_poll_interval`` pauses every partition and polls (empty),
so a slow handler never makes the consumer leave its group.

Acks move offsets in memory (:class:`unimq_kafka.offsets.OffsetTracker`, contiguous offsets only);
the poll thread commits every ``commit_interval_ms``. On a revoke (in the poll thread, inside
librdkafka's rebalance) the event loop stops handing out the partitions' records, waits for those
being processed (up to ``lock_timeout``, default 5 s), hands back what is still held, and the
thread commits what was acked before the partitions move. Retry topic, delayed sends and
hand-back on close work as in the aiokafka driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition
from unimq_kafka.mapping import MESSAGE_ID
from unimq_kafka.offsets import OffsetTracker
from unimq_kafka.subscription import JOIN_TIMEOUT, REVOKE_WAIT, RetryTopicSubscription

from unimq.driver import AckBatch, ReceiveSettings
from unimq.errors import UnimqError
from unimq.message import Delivery, Message
from unimq.reliability import EXPIRES_AT, NOT_BEFORE, attempt_from_headers, epoch_ms
from unimq_kafka_confluent.mapping import _ENC, _ERR, _NO_TIMESTAMP, from_message

if TYPE_CHECKING:
    from unimq_kafka_confluent.driver import ConfluentKafkaDriver

log = logging.getLogger("unimq.kafka")

#: How long one ``consume`` waits for records; bounds the latency of pause/resume, commits and close.
POLL_SECONDS = 0.1
#: Longest a librdkafka call made from the poll thread for positioning may take.
CALL_TIMEOUT = 10.0

#: Most records one receive() hands out: the aiokafka reader's 16 costs this driver a fifth of its
#: consume rate in per-call overhead; 128 keeps what a rebalance waits for (records handed out,
#: not yet processed) to a fraction of the default prefetch.
HANDOUT = 128
#: Most records the poll thread takes per turn and keeps converted ahead (it refills below half).
#: Each record is five objects the cyclic GC tracks (librdkafka's Message, its header list and
#: tuple, Message, Delivery): 1,000 converted ahead kept ~2,000 alive, so the GC ran a collection
#: every ~140 records and promoted them to older generations (full collections: ~30% of the
#: consume time at 100 B); with 128 they mostly die young and collections all but stop.
READ_AHEAD = 128
#: How long librdkafka waits to refill a full fetch queue (see _config).
FETCH_QUEUE_BACKOFF_MS = 10

Partition = tuple[str, int]


class ConfluentSubscription(RetryTopicSubscription):
    ack_batch = AckBatch(max_batch=1000, max_in_flight=1)
    _driver: ConfluentKafkaDriver

    def __init__(self, driver: ConfluentKafkaDriver, topic: str, group: str | None,
                 settings: ReceiveSettings) -> None:
        self._driver = driver
        self._topic = topic
        self.group_id = driver.kafka.group_id(topic, group)
        self.retry_topic = driver.kafka.retry_topic(topic, group)
        self._start = settings.start
        self._prefetch = settings.prefetch
        opts = driver.options
        self._revoke_wait = min(settings.lock_timeout or REVOKE_WAIT, opts.max_poll_interval_ms / 1000 * 0.8)
        self._keepalive = opts.max_poll_interval_ms / 1000 / 3
        self._interval = opts.commit_interval_ms / 1000
        self._fetch = min(self._prefetch, READ_AHEAD)
        self._low = self._fetch // 2
        self._consumer: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        #: Appended by the poll thread, drained by receive() on the loop.
        self._buffer: deque[Delivery] = deque()
        self._inflight: set[Delivery] = set()
        #: Owned by the poll thread (librdkafka's callbacks run there too).
        self._trackers: dict[Partition, OffsetTracker] = {}
        self._held: dict[Partition, float] = {}
        self._paused = False
        self._last_poll = self._last_commit = time.monotonic()
        #: A binary semaphore, held while no wake-up is pending: receive() releases it once it took
        #: the buffer below half, the poll thread's acquire waits for that (C calls, where an Event
        #: costs a Python Condition on each side).
        self._room = threading.Lock()
        self._room.acquire()
        #: Set by receive() while it waits for records: only then does the poll thread wake the loop.
        self._waiter: asyncio.Future[None] | None = None
        self._assigned = asyncio.Event()
        self._error: BaseException | None = None
        self._dirty = False
        self._stopping = False
        self._closing = False

    @property
    def native(self) -> Any:
        """The confluent_kafka.Consumer (after open). Do not call it: its poll thread owns it."""
        return self._consumer

    def _config(self) -> dict[str, Any]:
        opts = self._driver.options
        return {
            **self._driver.client_config(),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": opts.session_timeout_ms,
            "heartbeat.interval.ms": opts.heartbeat_interval_ms,
            "max.poll.interval.ms": opts.max_poll_interval_ms,
            "fetch.wait.max.ms": opts.fetch_max_wait_ms,
            "queued.max.messages.kbytes": opts.queued_max_messages_kbytes,
            # Over the queue bounds librdkafka postpones the next fetch by this (default 1 s: a
            # consumer that drains its queue quickly would stall a second at every refill).
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            # aiokafka's default assignor (roundrobin, eager): members of both drivers can share a
            # group (librdkafka's default, range + roundrobin, would pick range: INCONSISTENT_GROUP_PROTOCOL).
            "partition.assignment.strategy": "roundrobin",
            "on_commit": self._on_commit,
        }

    async def open(self) -> None:
        kafka = self._driver.kafka
        await kafka.prepare_topics(self._topic, self.retry_topic)
        self.max_deliveries = await kafka.max_deliveries_of(self._topic)
        loop = self._loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        self._consumer = Consumer(self._config())
        self._consumer.subscribe([self._topic, self.retry_topic], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._thread = threading.Thread(target=self._run, name=f"unimq-kafka-confluent-{self._topic}", daemon=True)
        self._thread.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(JOIN_TIMEOUT):
                await self._assigned.wait()
        if not self._assigned.is_set():
            log.warning("kafka: group %r got no assignment within %.0fs; continuing", self.group_id, JOIN_TIMEOUT)

    # librdkafka callbacks: poll thread, inside consume().

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._trackers[(tp.topic, tp.partition)] = OffsetTracker()
        try:
            self._apply_start(consumer, [tp for tp in partitions if tp.topic == self._topic])
        except KafkaException as exc:
            log.warning("kafka: positioning group %r failed, starting from its offsets: %s", self.group_id, exc)
        finally:
            self._call(self._assigned.set)

    def _apply_start(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Position partitions the group has no committed offset for, and anchor them with a commit."""
        start = self._start if self._start is not None else self._driver.options.auto_offset_reset
        if start == "earliest" or not partitions:
            return
        fresh = [tp for tp in consumer.committed(partitions, timeout=CALL_TIMEOUT) if tp.offset < 0]
        if not fresh:
            return
        if isinstance(start, datetime):
            wanted = [TopicPartition(tp.topic, tp.partition, int(start.timestamp() * 1000)) for tp in fresh]
            found = consumer.offsets_for_times(wanted, timeout=CALL_TIMEOUT)
            offsets = [tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in found]
        elif isinstance(start, int):
            offsets = [TopicPartition(tp.topic, tp.partition, start) for tp in fresh]
        else:
            offsets = [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in fresh]
        anchored = []
        for tp in offsets:
            if tp.offset == OFFSET_END:
                _, high = consumer.get_watermark_offsets(tp, timeout=CALL_TIMEOUT)
                tp = TopicPartition(tp.topic, tp.partition, high)  # noqa: PLW2901 - resolved in place
            anchored.append(tp)
        consumer.commit(offsets=anchored, asynchronous=False)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._give_up(consumer, partitions, commit=True)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Partitions lost without a rebalance (session expired): their offsets are no longer ours."""
        self._give_up(consumer, partitions, commit=False)

    def _give_up(self, consumer: Any, partitions: list[TopicPartition], commit: bool) -> None:
        leaving = {key: tracker for tp in partitions
                   if (tracker := self._trackers.pop(key := (tp.topic, tp.partition), None)) is not None}
        for key in leaving:
            self._held.pop(key, None)
        loop = self._loop
        if leaving and loop is not None and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self._release(list(leaving.values())), loop).result(
                    self._revoke_wait + 5)
            except Exception as exc:
                log.warning("kafka: releasing revoked partitions of group %r failed: %s", self.group_id, exc)
        offsets = []
        for (topic, partition), tracker in leaving.items():
            tracker.revoked = True
            offset = tracker.committable()
            if offset is not None:
                offsets.append(TopicPartition(topic, partition, offset))
        if commit and offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("kafka: commit on revoke for group %r failed: %s", self.group_id, exc)

    async def _release(self, trackers: list[OffsetTracker]) -> None:
        """On the loop: stop handing out the partitions' records, ours or those the core holds
        unread, let those being processed finish for up to ``lock_timeout``, hand back the rest
        (their next owner reads them)."""
        gone = {id(tracker) for tracker in trackers}
        if self._buffer:
            self._buffer = deque(d for d in self._buffer if id(d.token) not in gone)
        self._inflight.difference_update(self.discard_unread(lambda d: id(d.token) in gone))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._revoke_wait
        while any(id(d.token) in gone for d in self._inflight):
            if self._closing or loop.time() >= deadline:
                await self._hand_back([d for d in self._inflight if id(d.token) in gone])
                return
            await asyncio.sleep(0.02)

    def _on_commit(self, error: Any, partitions: list[TopicPartition]) -> None:
        if error is not None:
            log.warning("kafka: commit for group %r failed (those messages may come again): %s", self.group_id, error)

    # The poll thread.

    def _call(self, callback: Any, *args: Any) -> None:
        """Run ``callback`` on the event loop, from the poll thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        consumer = self._consumer
        try:
            while not self._stopping:
                try:
                    self._step(consumer)
                except Exception as exc:
                    mapped = self._driver.map_error(exc, f"consuming {self._topic}")
                    if not mapped.retryable:
                        self._call(self._fail, mapped)
                        return
                    log.warning("kafka: poll of %r failed, retrying: %s", self._topic, mapped)
                    time.sleep(1.0)
        finally:
            if self._stopped is not None:
                self._call(self._stopped_set)

    def _step(self, consumer: Any) -> None:
        """One turn of the poll thread: wait for room, or fetch; commit when due."""
        if len(self._buffer) > self._low:
            if time.monotonic() - self._last_poll >= self._keepalive:
                # Full for long: poll (empty) so the group keeps this member.
                consumer.pause(consumer.assignment())
                self._paused = True
                consumer.consume(1, 0)
                self._last_poll = time.monotonic()
            self._room.acquire(timeout=self._interval)
        else:
            if self._paused:
                consumer.resume([tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in self._held])
                self._paused = False
            if self._held:
                self._resume_due(consumer)
            # Take what is queued; when nothing is, wait for one record (consume(n, timeout) would
            # wait for all n), then take what came with it.
            records = consumer.consume(self._fetch, 0)
            if not records:
                first = consumer.poll(POLL_SECONDS)
                if first is not None:
                    records = [first, *consumer.consume(self._fetch - 1, 0)] if self._fetch > 1 else [first]
            self._last_poll = time.monotonic()
            if records:
                self._accept(consumer, records)
        if self._dirty and time.monotonic() - self._last_commit >= self._interval:
            self._last_commit = time.monotonic()
            self._commit(consumer, asynchronous=True)

    def _stopped_set(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _fail(self, error: UnimqError) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        """On the loop: end the wait of a receive(), if one waits."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _accept(self, consumer: Any, records: list[Any]) -> None:
        """Records → deliveries, on the poll thread; the per-record hot path. A record's tracker is
        looked up once per run of one partition, whose offsets are tracked in one call; each
        ``record.x()`` (a C call) is made once; a record whose only header is ``message-id`` (what
        unimq writes for a first delivery) is converted inline, any other through ``from_message``."""
        now_ms = time.time() * 1000
        trackers = self._trackers
        retry_topic = self.retry_topic
        out: list[Delivery] = []
        append = out.append
        skip: set[Partition] = set()
        failure: KafkaException | None = None
        last_topic: str | None = None
        last_partition = -1
        tracker: OffsetTracker | None = None
        run: list[int] = []  # the current partition run's offsets, tracked before anything is handed out
        stamp: tuple[int, int] | None = None
        when: datetime | None = None
        for record in records:
            error = record.error()
            if error is not None:
                # Raised after the batch: records after it are tracked and delivered first (an
                # untracked record would let the commit point pass over it).
                if error.code() != KafkaError._PARTITION_EOF and not error.retriable():
                    failure = failure or KafkaException(error)
                continue
            topic = record.topic()
            partition = record.partition()
            if partition != last_partition or topic != last_topic:
                if run and tracker is not None:
                    tracker.track_many(run)
                    run = []
                last_topic, last_partition = topic, partition
                key = (topic, partition)
                tracker = None if key in skip else trackers.get(key)
            if tracker is None:
                continue
            offset = record.offset()
            raw = record.headers()
            if raw is not None and len(raw) == 1 and raw[0][0] == MESSAGE_ID and (message_id := raw[0][1]):
                if (ts := record.timestamp()) != stamp:
                    stamp = ts
                    when = None if ts[0] == _NO_TIMESTAMP else datetime.fromtimestamp(ts[1] / 1000, UTC)
                value = record.value()
                name = record.key()
                run.append(offset)
                append(Delivery(Message(value if value is not None else b"",
                                        name.decode(_ENC, _ERR) if name is not None else None, {},
                                        message_id.decode(_ENC, _ERR), None, None, None, when),
                                1, record, tracker, 0.0))
                continue
            message = from_message(record, topic, partition, offset)
            headers = message.headers
            if headers:
                due = epoch_ms(headers, NOT_BEFORE)
                if due > now_ms:
                    if run:
                        tracker.track_many(run)
                        run = []
                    if topic == retry_topic:
                        self._hold(consumer, (topic, partition), offset, (due - now_ms) / 1000)
                        skip.add((topic, partition))
                        tracker = None
                        continue
                    tracker.track(offset)
                    self._defer(record, tracker)
                    continue
                attempt = attempt_from_headers(message)
                expires = epoch_ms(headers, EXPIRES_AT) / 1000
            else:
                attempt, expires = 1, 0.0
            run.append(offset)
            # token: the partition's tracker; the offset to ack is native.offset() (no tuple per record)
            append(Delivery(message, attempt, record, tracker, expires))
        if run and tracker is not None:
            tracker.track_many(run)
        if out:
            self._buffer.extend(out)
            if self._waiter is not None:  # after the extend: receive() sets it before its last look at the buffer
                self._call(self._wake)
        if failure is not None:
            raise failure

    def _hold(self, consumer: Any, key: Partition, offset: int, seconds: float) -> None:
        """A retry record is not due: pause its partition and rewind to it until it is."""
        consumer.pause([TopicPartition(*key)])
        consumer.seek(TopicPartition(key[0], key[1], offset))
        self._held[key] = time.monotonic() + seconds

    def _resume_due(self, consumer: Any) -> None:
        now = time.monotonic()
        due = [key for key, at in self._held.items() if at <= now]
        for key in due:
            del self._held[key]
        if due and not self._paused:
            consumer.resume([TopicPartition(*key) for key in due if key in self._trackers])

    def _defer(self, record: Any, tracker: OffsetTracker) -> None:
        """A delayed send reached the topic: move it, bytes and headers as they are, to the retry topic."""

        def moved(error: Any, _copy: Any) -> None:  # the producer's report thread
            self._call(self._moved, record, tracker, error)

        self._driver.producer.produce(self.retry_topic, record.value(), record.key(),
                                      headers=record.headers(), on_delivery=moved)

    def _moved(self, record: Any, tracker: OffsetTracker, error: Any) -> None:
        if error is None:
            tracker.ack(record.offset())
            self._dirty = True
            return
        log.warning("kafka: could not defer a delayed message of %r; delivering it now", self._topic)
        message = from_message(record, record.topic(), record.partition(), record.offset())
        expires = epoch_ms(message.headers, EXPIRES_AT) / 1000
        self._buffer.append(Delivery(message, attempt_from_headers(message), record, tracker, expires))
        self._wake()

    def _commit(self, consumer: Any, asynchronous: bool) -> None:
        self._dirty = False
        offsets = []
        for (topic, partition), tracker in list(self._trackers.items()):
            offset = tracker.committable()
            if offset is not None:
                offsets.append((tracker, TopicPartition(topic, partition, offset)))
        if not offsets:
            return
        try:
            consumer.commit(offsets=[tp for _, tp in offsets], asynchronous=asynchronous)
        except KafkaException as exc:
            self._dirty = True
            log.warning("kafka: commit for group %r failed; will retry: %s", self.group_id, exc)
            return
        for tracker, tp in offsets:
            tracker.committed(tp.offset)

    # The Subscription interface.

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        buffer = self._buffer
        if not buffer:
            if self._error is not None:
                raise self._error
            if timeout > 0:
                # A bare future and timer: asyncio.Event + asyncio.timeout cost several times more per wait.
                loop = asyncio.get_running_loop()
                waiter = self._waiter = loop.create_future()
                timer = loop.call_later(timeout, self._wake)
                try:
                    if not buffer:
                        await waiter
                finally:
                    self._waiter = None
                    timer.cancel()
            buffer = self._buffer
            if not buffer:
                if self._error is not None:
                    raise self._error
                return []
        count = min(max_messages, HANDOUT)
        if len(buffer) <= count:
            out = list(buffer)
            for _ in out:
                buffer.popleft()
        else:
            out = [buffer.popleft() for _ in range(count)]
        self._inflight.update(out)
        if len(buffer) <= self._low and self._room.locked():
            self._room.release()
        return out

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One call per partition's offsets, no commit or wake-up (the poll thread commits)."""
        if not deliveries:
            return
        self._inflight.difference_update(deliveries)
        trackers = [delivery.token for delivery in deliveries]
        offsets = [delivery.native.offset() for delivery in deliveries]
        first: OffsetTracker = trackers[0]
        if trackers.count(first) == len(trackers):
            first.ack_many(offsets)
        else:
            runs: dict[OffsetTracker, list[int]] = {}
            for tracker, offset in zip(trackers, offsets, strict=True):
                runs.setdefault(tracker, []).append(offset)
            for tracker, run in runs.items():
                tracker.ack_many(run)
        self._dirty = True

    async def close(self) -> None:
        self._stopping = True
        self._closing = True
        if self._room.locked():
            self._room.release()
        if self._stopped is not None:
            await asyncio.wait({self._stopped}, timeout=POLL_SECONDS * 50)
        self._buffer.clear()
        await self._hand_back(list(self._inflight))
        self._inflight.clear()
        if self._consumer is not None:
            await asyncio.to_thread(self._finish)

    def _finish(self) -> None:
        """Commit what was acked and leave the group (its revoke callback commits nothing more)."""
        try:
            self._commit(self._consumer, asynchronous=False)
        finally:
            self._consumer.close()
