"""``kafka://h1:9092,h2:9092?...``: topics are destinations, consumer groups are groups.

The producer is idempotent with ``acks=all`` by default; ``send_many`` fills aiokafka's record
batches itself (:mod:`unimq_kafka.batches`) and awaits one future per batch, not per record. Consumers acknowledge per
message on top of offsets (:mod:`unimq_kafka.offsets`); nack and delayed send are emulated with
retry topics (:mod:`unimq_kafka.subscription`), dead-lettering by the core into ``<topic>.dlq``.
Kafka rejects unknown topic configs, so what ``ensure()`` must tell every other process
(``max_deliveries``) is kept in the compacted topic ``__unimq_meta``, keyed by topic.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka import errors as kerr
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]
from aiokafka.conn import create_conn  # type: ignore[import-untyped]
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]
from aiokafka.protocol.metadata import MetadataRequest  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]
from pydantic import BaseModel

from unimq.capabilities import Capabilities, emulated, native, none
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
from unimq_kafka.batches import publish_batches
from unimq_kafka.mapping import from_record, timestamp_ms, to_headers, to_key
from unimq_kafka.options import KafkaOptions
from unimq_kafka.subscription import KafkaSubscription

#: Longest emulated delay: retry topics keep records twice as long (RETRY_RETENTION_MS).
MAX_DELAY = 7 * 24 * 3600.0
RETRY_RETENTION_MS = int(2 * MAX_DELAY * 1000)
#: Room left under max_request_size for the record batch, key and headers.
RECORD_OVERHEAD = 48_576
_TOPIC_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]")
_TOPIC_EXISTS = 36
_UNKNOWN_TOPIC = 3

#: Where ensure() keeps what other processes must know of a topic (compacted, key = topic).
META_TOPIC = "__unimq_meta"


def _named(*words: str) -> Callable[[BaseException], bool]:
    """Match aiokafka errors by class name: its classes follow Kafka's error names, with no common bases."""
    return lambda exc: any(word in type(exc).__name__ for word in words)


#: aiokafka exception -> unimq class (unimq.errors.GENERIC_ERRORS follow).
ERRORS: tuple[ErrorRule, ...] = (
    (kerr.KafkaTimeoutError, Timeout),
    (kerr.KafkaError, AuthenticationError, _named("Sasl", "Authentication")),
    (kerr.KafkaError, PermissionDenied, _named("AuthorizationFailed")),
    (kerr.UnknownTopicOrPartitionError, NotFound),
    (kerr.KafkaError, MessageTooLarge, _named("TooLarge")),
    (kerr.KafkaError, ConfigError, _named("Invalid", "Configuration", "PolicyViolation")),
    (kerr.ProducerClosed, Closed),
    (kerr.ConsumerStoppedError, Closed),
    (kerr.KafkaUnavailableError, BrokerConnectionError),
    (kerr.BrokerNotAvailableError, BrokerConnectionError),
    # Connection loss, leaders and coordinators moving: every error Kafka marks retriable.
    (kerr.KafkaError, BrokerConnectionError, lambda exc: bool(getattr(exc, "retriable", False))),
)


def _led(partitions: list[dict[str, Any]]) -> bool:
    """Every partition of a topic's metadata entry has a leader."""
    return bool(partitions) and all(p["leader"] >= 0 for p in partitions)


class KafkaDriver(Driver):
    name = "kafka"
    Options: ClassVar[type[BaseModel]] = KafkaOptions
    errors: ClassVar[Sequence[ErrorRule]] = ERRORS
    options: KafkaOptions

    def __init__(self, url: BrokerURL, options: KafkaOptions) -> None:
        if url.username and options.sasl_username is None:
            options = options.model_copy(update={"sasl_username": url.username, "sasl_password": url.password})
        register_secret(options.sasl_password)
        register_secret(options.ssl_password)
        super().__init__(url, options)
        self.bootstrap = ",".join(f"{h}:{p or 9092}" for h, p in url.hosts) or "localhost:9092"
        self._producer: Any = None
        self._admin: Any = None
        self._inspector: Any = None
        self._lock = asyncio.Lock()
        self._known_topics: set[str] = set()
        self._defaults: tuple[int, int] | None = None
        self._meta_lock = asyncio.Lock()
        #: The ``__unimq_meta`` records read so far (topic -> settings) and the next offset to read.
        self._meta: dict[str, dict[str, Any]] = {}
        self._meta_offset = 0
        backlog = "earliest" if options.auto_offset_reset == "earliest" else "latest"
        self._caps = Capabilities(
            backend="kafka",
            persistence=native(note="replicated log; acks=all and the idempotent producer by default"),
            fanout=native(note="one consumer group per group"),
            competing_consumers=native(note="within a group one consumer per partition: parallelism <= partitions"),
            ordering="per_key",
            ordering_note="per partition (key -> partition); a nacked message is redelivered from the retry "
                          "topic, after later messages of its key",
            delayed_delivery=emulated(
                limit=MAX_DELAY,
                note="not-before header; each group moves a not-yet-due message to {topic}.retry.{group} and "
                     "holds it there; plain Kafka consumers see it at once",
            ),
            nack_delay=emulated(limit=MAX_DELAY, note="redelivery copy to {topic}.retry.{group}, held until due"),
            dead_letter=emulated(note="{topic}.dlq; reason and original topic/partition/offset in headers"),
            priority=none("a log has no priorities: use a topic per priority"),
            message_ttl=emulated(note="x-unimq-expires-at header; unimq consumers drop expired messages"),
            deduplication=none("the idempotent producer only removes duplicates of its own retries"),
            replay=native(note="start= earliest, latest, a datetime or an offset (group without committed offsets)"),
            lock_extension=none("no locks: a message stays with its consumer until settled or the consumer "
                                "leaves the group; slow handlers never cost the group membership"),
            peek=emulated(note="reads from the default group's committed offsets, without joining a group"),
            batch_send=native(limit=10_000),
            headers=native(),
            transactions=none(),
            listing=native(note="topics, without Kafka's internal ones (__*)"),
            partitions=native(note="created with the topic, or added to an existing one (never removed)"),
            replication=native(note="replication factor of topics ensure() creates"),
            fifo=none("order is per partition (key): send with key= for per-key order"),
            sessions=none("no sessions: messages of one key share a partition and stay in order"),
            retention=native(note="retention.ms of topics ensure() creates"),
            lock_timeout=none("no locks: a message stays with its consumer until settled or the consumer "
                              "leaves the group"),
            max_deliveries=emulated(note=f"kept in the compacted topic {META_TOPIC} (read by every consumer "
                                         "on open); past it the core dead-letters on receipt"),
            new_group_backlog=native(note="a group without committed offsets starts at the "
                                          f"{backlog} offset (auto_offset_reset); start= chooses otherwise")
            if backlog == "earliest" else none("auto_offset_reset=latest: a new group starts at the end"),
            max_message_bytes=options.max_request_size - RECORD_OVERHEAD,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def native(self) -> Any:
        """The AIOKafkaProducer. The admin client is ``await driver.admin()``."""
        return self._producer

    @property
    def producer(self) -> Any:
        if self._producer is None:
            raise Closed("kafka: the broker is not open")
        return self._producer

    # Naming.

    @staticmethod
    def group_id(topic: str, group: str | None) -> str:
        """The Kafka group id: the group itself, or ``<topic>.default`` for group=None."""
        return group if group is not None else f"{topic}.default"

    def retry_topic(self, topic: str, group: str | None) -> str:
        return f"{topic}.retry.{_TOPIC_UNSAFE.sub('_', self.group_id(topic, group))}"

    # Connection.

    def security_kwargs(self) -> dict[str, Any]:
        opts = self.options
        kwargs: dict[str, Any] = {"security_protocol": opts.security_protocol}
        if opts.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = create_ssl_context(
                cafile=opts.ssl_cafile, certfile=opts.ssl_certfile, keyfile=opts.ssl_keyfile,
                password=opts.ssl_password,
            )
        if opts.security_protocol.startswith("SASL"):
            kwargs.update(sasl_mechanism=opts.sasl_mechanism, sasl_plain_username=opts.sasl_username,
                          sasl_plain_password=opts.sasl_password)
        return kwargs

    async def open(self) -> None:
        opts = self.options
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=opts.client_id,
            acks=opts.producer_acks,
            enable_idempotence=opts.enable_idempotence,
            linger_ms=opts.linger_ms,
            max_batch_size=opts.max_batch_size,
            compression_type=opts.compression_type,
            max_request_size=opts.max_request_size,
            request_timeout_ms=opts.request_timeout_ms,
            **self.security_kwargs(),
        )
        try:
            await producer.start()
        except BaseException as exc:
            await producer.stop()
            if isinstance(exc, kerr.KafkaConnectionError):
                cause = await self._bootstrap_cause()
                if cause is not None:
                    raise cause from exc
            raise
        self._producer = producer

    async def _bootstrap_cause(self) -> BaseException | None:
        """Why the first bootstrap server refuses us (wrong password, untrusted certificate, ...).

        aiokafka only logs it and raises "Unable to bootstrap"; one direct connection finds it.
        """
        host, port = self.url.hosts[0] if self.url.hosts else ("localhost", None)
        try:
            conn = await create_conn(host, port or 9092, client_id=self.options.client_id,
                                     request_timeout_ms=self.options.request_timeout_ms, **self.security_kwargs())
        except (OSError, TimeoutError, kerr.KafkaError) as exc:
            return exc
        conn.close()
        return None

    async def close(self) -> None:
        for name in ("_inspector", "_admin", "_producer"):
            client = getattr(self, name)
            setattr(self, name, None)
            if client is None:
                continue
            if name == "_admin":
                await client.close()
            else:
                await client.stop()

    async def admin(self) -> Any:
        """The AIOKafkaAdminClient, started on first use."""
        async with self._lock:
            if self._admin is None:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.options.client_id,
                                            request_timeout_ms=self.options.request_timeout_ms,
                                            **self.security_kwargs())
                await admin.start()
                self._admin = admin
            return self._admin

    async def _offsets_client(self) -> Any:
        """A consumer without a group, for end/beginning offsets."""
        async with self._lock:
            if self._inspector is None:
                inspector = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, client_id=self.options.client_id,
                                             enable_auto_commit=False, **self.security_kwargs())
                await inspector.start()
                self._inspector = inspector
            return self._inspector

    # Publishing.

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        if len(messages) > 1:
            return await publish_batches(self.producer, destination, messages,
                                         lambda exc: self._publish_error(exc, destination))
        message = messages[0]
        try:
            future = await self.producer.send(destination, message.body, key=to_key(message),
                                              headers=to_headers(message), timestamp_ms=timestamp_ms(message))
        except Exception as exc:
            return [self._publish_error(exc, destination)]
        await asyncio.wait([future])
        error = asyncio.CancelledError() if future.cancelled() else future.exception()
        return [None if error is None else self._publish_error(error, destination)]

    def _publish_error(self, exc: BaseException, destination: str) -> BaseException:
        if isinstance(exc, asyncio.CancelledError):
            return Closed(f"kafka: publish to {destination} was cancelled")
        return self.map_error(exc, f"publish to {destination}")

    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        return KafkaSubscription(self, destination, group, settings)

    # Administration.

    async def _partition_count(self, topic: str) -> int | None:
        """Partitions of ``topic``, None if it does not exist (listed first: describing would auto-create it)."""
        admin = await self.admin()
        if topic not in await admin.list_topics():
            return None
        described = await admin.describe_topics([topic])
        for entry in described:
            if entry["topic"] == topic and entry["error_code"] == 0:
                return len(entry["partitions"])
        return None

    async def _create(self, topics: Sequence[NewTopic]) -> None:
        if not topics:
            return
        admin = await self.admin()
        response = await admin.create_topics(list(topics))
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code not in (0, _TOPIC_EXISTS):
                detail = entry[2] if len(entry) > 2 and entry[2] else ""
                raise kerr.for_code(code)(f"creating topic {name!r}: {detail}")
        await self._wait_for_metadata(admin, {t.name for t in topics}, present=True)
        self._known_topics.update(t.name for t in topics)

    async def _topic_defaults(self) -> tuple[int, int]:
        """(partitions, replication) for new topics: the options, else the broker's defaults."""
        if self._defaults is None:
            admin = await self.admin()
            cluster = await admin.describe_cluster()
            node = str(cluster["brokers"][0]["node_id"])
            found = {"num.partitions": "1", "default.replication.factor": "1"}
            for response in await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, node)]):
                for resource in response.resources:
                    for entry in resource[4]:
                        if entry[0] in found and entry[1]:
                            found[entry[0]] = entry[1]
            self._defaults = (self.options.partitions or int(found["num.partitions"]),
                              self.options.replication or int(found["default.replication.factor"]))
        return self._defaults

    async def _new_topic(self, name: str, partitions: int | None, replication: int | None = None,
                         config: dict[str, str] | None = None) -> NewTopic:
        default_partitions, default_replication = await self._topic_defaults()
        return NewTopic(name, partitions or default_partitions, replication or default_replication,
                        topic_configs=config or {})

    async def prepare_topics(self, topic: str, retry_topic: str) -> None:
        """Before a consumer subscribes: the topic and its group's retry topic must exist."""
        if topic in self._known_topics and retry_topic in self._known_topics:
            return
        count = await self._partition_count(topic)
        wanted = []
        if count is None:
            if not self.options.auto_create:
                raise NotFound(f"kafka: topic {topic!r} does not exist (auto_create is off; call ensure())")
            wanted.append(await self._new_topic(topic, None))
        wanted.append(await self._new_topic(retry_topic, count, config={"retention.ms": str(RETRY_RETENTION_MS)}))
        await self._create(wanted)

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:
        partitions = spec.partitions or (await self._topic_defaults())[0]
        config = {"retention.ms": str(int(spec.retention.total_seconds() * 1000))} if spec.retention else {}
        existing = await self._partition_count(destination)
        topics = []
        if existing is None:
            topics.append(await self._new_topic(destination, partitions, spec.replication, config))
        if spec.dead_letter:
            topics.append(await self._new_topic(self.dead_letter_destination(destination), 1, spec.replication))
        retry = {"retention.ms": str(RETRY_RETENTION_MS)}
        for group in (None, *spec.groups):
            name = self.retry_topic(destination, group)
            topics.append(await self._new_topic(name, max(partitions, existing or 0), spec.replication, retry))
        await self._create(topics)
        if existing is not None and existing < partitions:
            admin = await self.admin()
            await admin.create_partitions({destination: NewPartitions(partitions)})
        if existing is None or existing < partitions:
            await self._wait_for_leaders(destination, partitions)
        if spec.max_deliveries:
            await self._write_meta(destination, {"max_deliveries": spec.max_deliveries}, spec.replication)

    # What ensure() tells other processes: the __unimq_meta topic.

    async def _write_meta(self, topic: str, settings: dict[str, Any] | None, replication: int | None = None) -> None:
        """Record ``settings`` for ``topic`` (None: forget it), acknowledged by every in-sync replica."""
        if META_TOPIC not in self._known_topics:
            if settings is None and await self._partition_count(META_TOPIC) is None:
                return
            config = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
            await self._create([await self._new_topic(META_TOPIC, 1, replication, config)])
        value = None if settings is None else json.dumps(settings).encode()
        await self.producer.send_and_wait(META_TOPIC, value, key=topic.encode(), partition=0)

    async def max_deliveries_of(self, topic: str) -> int | None:
        """The max_deliveries ensure() recorded for ``topic`` in any process (None: no limit).

        Reads the records of ``__unimq_meta`` added since the last call: a few bytes per ensured topic.
        """
        tp = TopicPartition(META_TOPIC, 0)
        async with self._meta_lock:
            if META_TOPIC not in self._known_topics:
                if await self._partition_count(META_TOPIC) is None:
                    return None
                self._known_topics.add(META_TOPIC)
            reader = await self._offsets_client()
            end = (await reader.end_offsets([tp]))[tp]
            if self._meta_offset < end:
                reader.assign([tp])  # only while reading: an assigned partition is long-polled
                try:
                    reader.seek(tp, self._meta_offset)
                    while self._meta_offset < end:
                        records = (await reader.getmany(tp, timeout_ms=1000)).get(tp, [])
                        if not records:
                            break  # nothing within a second: read the rest next time
                        for record in records:
                            if record.value is None:
                                self._meta.pop(record.key.decode(), None)
                            else:
                                self._meta[record.key.decode()] = json.loads(record.value)
                        self._meta_offset = await reader.position(tp)
                finally:
                    reader.unsubscribe()
        limit = self._meta.get(topic, {}).get("max_deliveries")
        return int(limit) if limit else None

    async def _wait_for_metadata(self, admin: Any, topics: set[str], present: bool) -> None:
        """Return once every broker lists ``topics`` with a leader for each partition (``present``),
        or none lists them (for up to 10 s). In a cluster the controller answers a create or a
        delete before every broker's metadata has it, and one broker's answer says nothing of the
        others': a consumer that joins right after a create must find its topics on whichever
        broker it asks (else the group rebalances when they appear, and re-reads what it had read),
        and a ``destinations()`` right after ``delete()`` must not list them."""
        nodes = [broker.nodeId for broker in admin._client.cluster.brokers()]
        request = MetadataRequest(sorted(topics), allow_auto_topic_creation=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            listed = [set[str]() for _ in nodes]
            for seen, node in zip(listed, nodes, strict=True):
                response = await admin._send_request(request, node)
                for topic in response.to_object()["topics"]:
                    # Present: listed with a leader for every partition; gone: not listed at all.
                    if topic["error_code"] == 0 and (not present or _led(topic["partitions"])):
                        seen.add(topic["topic"])
            done = all(topics <= seen for seen in listed) if present else not any(topics & seen for seen in listed)
            if done or loop.time() >= deadline:
                return
            await asyncio.sleep(0.1)

    async def _wait_for_leaders(self, topic: str, partitions: int) -> None:
        """Return once every partition's leader serves requests, so the first send after ``ensure()``
        is not answered NotLeaderForPartition (a new topic's leaders take ~0.1 s to start on KRaft)."""
        inspector = await self._offsets_client()
        await inspector.end_offsets([TopicPartition(topic, p) for p in range(partitions)])

    async def _topic_partitions(self, topic: str) -> list[TopicPartition]:
        count = await self._partition_count(topic)
        if count is None:
            raise NotFound(f"kafka: topic {topic!r} does not exist")
        return [TopicPartition(topic, p) for p in range(count)]

    async def _committed(self, group_id: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        admin = await self.admin()
        found = await admin.list_consumer_group_offsets(group_id, partitions=tps)
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}

    async def stats(self, destination: str, group: str | None) -> Stats:
        tps = await self._topic_partitions(destination)
        group_id = self.group_id(destination, group)
        inspector = await self._offsets_client()
        end = await inspector.end_offsets(tps)
        begin = await inspector.beginning_offsets(tps)
        committed = await self._committed(group_id, tps)
        lag = {tp.partition: end[tp] - committed.get(tp, begin[tp]) for tp in tps}
        retry_lag = None
        retry = self.retry_topic(destination, group)
        if await self._partition_count(retry) is not None:
            rtps = await self._topic_partitions(retry)
            rend = await inspector.end_offsets(rtps)
            rbegin = await inspector.beginning_offsets(rtps)
            rcommitted = await self._committed(group_id, rtps)
            retry_lag = sum(rend[tp] - rcommitted.get(tp, rbegin[tp]) for tp in rtps)
        dlq_depth = None
        dlq = self.dead_letter_destination(destination)
        if await self._partition_count(dlq) is not None:
            dtps = await self._topic_partitions(dlq)
            dend = await inspector.end_offsets(dtps)
            dbegin = await inspector.beginning_offsets(dtps)
            dlq_depth = sum(dend[tp] - dbegin[tp] for tp in dtps)
        total = sum(lag.values())
        return Stats(
            destination=destination, group=group, depth=total + (retry_lag or 0), lag=total,
            dead_letter_depth=dlq_depth,
            detail={"group_id": group_id, "lag_per_partition": lag, "retry_lag": retry_lag,
                    "end_offsets": {tp.partition: end[tp] for tp in tps},
                    "committed": {tp.partition: o for tp, o in committed.items()}},
        )

    async def peek(self, destination: str, count: int) -> list[Message]:
        """Read from the default group's committed offsets (or the beginning) without joining a group,
        in the topic and in its retry topic (nacked messages waiting to come back)."""
        tps = await self._topic_partitions(destination)
        retry = self.retry_topic(destination, None)
        if await self._partition_count(retry) is not None:
            tps += await self._topic_partitions(retry)
        committed = await self._committed(self.group_id(destination, None), tps)
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, client_id=self.options.client_id,
                                  enable_auto_commit=False, **self.security_kwargs())
        await reader.start()
        try:
            reader.assign(tps)
            end = await reader.end_offsets(tps)
            begin = await reader.beginning_offsets(tps)
            todo = {}
            for tp in tps:
                start = max(committed.get(tp, begin[tp]), begin[tp])
                if start < end[tp]:
                    reader.seek(tp, start)
                    todo[tp] = end[tp]
            out: list[Message] = []
            while todo and len(out) < count:
                batch = await reader.getmany(*todo, timeout_ms=1000, max_records=count - len(out))
                if not batch:
                    break
                for tp, records in batch.items():
                    out += [from_record(r) for r in records if r.offset < todo[tp]]
                    if records and records[-1].offset + 1 >= todo[tp]:
                        del todo[tp]
            return out[:count]
        finally:
            await reader.stop()

    async def destinations(self) -> list[str]:
        admin = await self.admin()
        return sorted(t for t in await admin.list_topics() if not t.startswith("__"))

    async def delete(self, destination: str) -> None:
        admin = await self.admin()
        dlq = self.dead_letter_destination(destination)
        prefixes = (f"{destination}.retry.", f"{dlq}.retry.")
        doomed = [t for t in await admin.list_topics() if t in (destination, dlq) or t.startswith(prefixes)]
        if doomed:
            response = await admin.delete_topics(doomed)
            for name, code, *_ in response.topic_error_codes:
                if code not in (0, _UNKNOWN_TOPIC):
                    raise kerr.for_code(code)(f"deleting topic {name!r}")
            if self._producer is not None:
                # The producer refreshes metadata for every topic it has sent to, and with
                # auto.create.topics.enable such a refresh would create a deleted topic again.
                client = self._producer.client
                client.set_topics([t for t in client._topics if t not in doomed])
            await self._wait_for_metadata(admin, set(doomed), present=False)
        self._known_topics.difference_update(doomed)
        await self._write_meta(destination, None)
