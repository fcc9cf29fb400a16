"""The RabbitMQ driver: topology, publishing with pipelined publisher confirms, error mapping.

Topology (see docs/backends/rabbitmq.md):

- destination ``d`` = durable topic exchange ``d``; a message's routing key is its subject
  (``send(subject=)``, the key then in header ``x-unimq-key``) or else its key;
- group ``g`` = durable queue ``d.g`` bound to ``d`` with ``#`` (every group gets every message);
- group None = the queue named ``d`` (an existing one is used as is), also bound to ``d``, so
  plain AMQP publishers to the default exchange with routing key ``d`` reach it too;
- native routing: a consumer opened with ``subject=P`` binds its group's queue with ``P`` (and
  ``d.delay.*``, the routing key delayed sends come back with) and removes ``#``, so messages P does
  not match are never enqueued; a consumer without a subject binds ``#`` again. Bindings outlive
  consumers (the group keeps receiving while none is open), the last consumer to open decides
  whether ``#`` is bound, and consumers of one group with different patterns leave the union of
  their patterns bound. ``ensure()`` binds a group ``#`` unless a consumer of this process narrowed
  it (then it re-binds those patterns). The core filters every delivery as well (messages queued
  before the binding changed, delayed sends, ``ensure()`` from another process re-adding ``#``);
- dead letters go to exchange + queue ``d.dlq``; delays wait in TTL queues ``<queue>.delay.<ms>``
  that dead-letter back into the exchange (delayed send) or the origin queue (nack with delay);
- ``ensure(max_deliveries=n)`` is kept where every process reads it: the empty, unbound queue
  ``d.max-deliveries`` with ``x-max-length`` = n. AMQP cannot read a queue's arguments, so a
  reader declares it again with another ``x-max-length`` and takes n from the broker's refusal
  ("inequivalent arg ... current is 'n'"), on a throw-away channel.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Sequence
from typing import Any, ClassVar, cast
from urllib.parse import unquote

import aiormq
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractChannel, AbstractRobustConnection, ExchangeType
from aiormq.abc import ConfirmationFrameType
from pamqp.commands import Basic
from pydantic import BaseModel

from unimq.capabilities import Capabilities, emulated, native, none
from unimq.driver import DestinationSpec, Driver, ReceiveSettings, Stats, Subscription
from unimq.errors import (
    AuthenticationError,
    BrokerConnectionError,
    ConfigError,
    ErrorRule,
    NotFound,
    PermissionDenied,
    PublishError,
    Throttled,
    register_secret,
)
from unimq.message import Message
from unimq.url import BrokerURL
from unimq_rabbitmq import mapping
from unimq_rabbitmq.cluster import connect_hosts
from unimq_rabbitmq.options import RabbitMQOptions

#: Longest delay or ttl: RabbitMQ TTLs are 32-bit millisecond timers.
MAX_DELAY_SECONDS = (2**32 - 1) / 1000
#: A delay queue is re-declared at least this often while used, so x-expires never removes it
#: while it still holds messages (x-expires = ttl + DELAY_QUEUE_GRACE_MS).
REDECLARE_EVERY = 30.0
DELAY_QUEUE_GRACE_MS = 300_000
BIND_ALL = "#"
#: In a confirmed batch, bodies up to this size are queued without waiting for the socket write;
#: larger ones wait, so a pipelined batch cannot pile up megabytes in the transport's buffer
#: (Python 3.11's selector transport copies the unsent rest of that buffer after every partial write).
NO_DRAIN_MAX_BYTES = 4096
#: The value in a PRECONDITION_FAILED "inequivalent arg" refusal (3.x: 'n'; 4.x: the value 'n' of type ...).
_CURRENT = re.compile(r"current is (?:the value )?'(-?\d+)'")

#: aiormq exception -> unimq class (unimq.errors.GENERIC_ERRORS follow; aiormq's connection errors
#: are OSErrors, so the credential rows come first).
ERRORS: tuple[ErrorRule, ...] = (
    (amqp_errors.ProbableAuthenticationError, AuthenticationError),
    (amqp_errors.AuthenticationError, AuthenticationError),
    (amqp_errors.ConnectionNotAllowed, PermissionDenied),
    (amqp_errors.ChannelAccessRefused, PermissionDenied),
    (amqp_errors.ChannelNotFoundEntity, NotFound),
    (amqp_errors.ChannelPreconditionFailed, ConfigError),
    (amqp_errors.DeliveryError, Throttled),
    (amqp_errors.AMQPConnectionError, BrokerConnectionError),
    (amqp_errors.ChannelInvalidStateError, BrokerConnectionError),
    (amqp_errors.ChannelClosed, BrokerConnectionError),
    (ValueError, ConfigError),
)


class _Confirms:
    """Resolves the publish channel's publisher confirms in aiormq's connection reader.

    aiormq hands every frame to a channel through a queue read by the channel's own task, so an
    awaited single send waits a further event-loop turn for its confirm. This replaces the queue's
    ``put`` (the connection reader's only call) and settles a basic.ack of one tag on the spot, when
    nothing is queued before it: a basic.return (mandatory, unroutable) precedes its ack on the wire
    and is still queued or being read then, so that ack goes the queue's way and the return wins.
    """

    def __init__(self, channel: aiormq.Channel) -> None:
        self.channel = channel
        self._queue: asyncio.Queue[Any] = channel.frames
        self._forward = self._queue.put
        self._queue.put = self.put  # type: ignore[method-assign]

    async def put(self, item: tuple[int, Any]) -> None:
        frame = item[1]
        if type(frame) is Basic.Ack and not frame.multiple and self._queue.empty():
            self.channel._confirm_delivery(frame.delivery_tag, frame)
            return
        await self._forward(item)


class RabbitMQDriver(Driver):
    name = "rabbitmq"
    Options: ClassVar[type[BaseModel]] = RabbitMQOptions
    errors: ClassVar[Sequence[ErrorRule]] = ERRORS
    options: RabbitMQOptions

    def __init__(self, url: BrokerURL, options: RabbitMQOptions) -> None:
        super().__init__(url, options)
        if url.scheme != "amqps" and options.tls_options_given:
            raise ConfigError("rabbitmq: ca_file, cert_file, key_file and verify apply to amqps:// URLs only")
        register_secret(url.password)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._confirms: _Confirms | None = None
        self._exchanges: set[str] = set()
        self._queues: set[str] = set()
        self._delay_queues: dict[str, float] = {}
        self._specs: dict[str, DestinationSpec] = {}
        self._groups: dict[str, set[str | None]] = {}
        self._patterns: dict[str, set[str]] = {}  # queue -> patterns this process's consumers bound instead of '#'
        self._topology_lock = asyncio.Lock()
        self._caps = self._declare_capabilities()

    def _declare_capabilities(self) -> Capabilities:
        quorum = self.options.queue_type == "quorum"
        levels = self.options.priority_levels
        delay_note = "per-delay TTL queues <queue>.delay.<ms> dead-lettering back; delay rounded up to 2 digits of ms"
        return Capabilities(
            backend="rabbitmq",
            persistence=native(note="durable exchanges and queues, persistent messages, publisher confirms"),
            fanout=native(note="topic exchange <dest>; one durable queue <dest>.<group> per group"),
            competing_consumers=native(),
            ordering="none",
            ordering_note="a queue delivers in publish order to a single consumer; competing consumers, "
                          "prefetch and redeliveries reorder, and there is no per-key affinity",
            delayed_delivery=emulated(limit=MAX_DELAY_SECONDS, note=delay_note),
            nack_delay=emulated(limit=MAX_DELAY_SECONDS, note=delay_note),
            dead_letter=emulated(note="copy with reason published (confirmed) to exchange+queue <dest>.dlq, then ack"),
            priority=(none("quorum queues have no priorities on RabbitMQ 3.x; use queue_type=classic") if quorum
                      else native(limit=levels or 255,
                                  note="x-max-priority set by ensure(max_priority=n) or the URL max_priority")),
            message_ttl=native(limit=MAX_DELAY_SECONDS, note="per-message expiration"),
            deduplication=none("RabbitMQ has no de-duplication; de-duplicate by message_id in the consumer"),
            replay=none("queues forget acked messages; streams are not mapped by this adapter"),
            lock_extension=none("an unacked message stays with its consumer until settled or the channel closes"),
            peek=none("basic.get + requeue would redeliver and reorder; use the management UI"),
            batch_send=native(limit=1000, note="pipelined basic.publish, confirms awaited together; not atomic"),
            headers=native(),
            transactions=none(),
            listing=none("AMQP cannot list exchanges or queues (the management plugin can)"),
            partitions=none("a queue is not partitioned: use competing consumers of one group"),
            replication=(native(note="x-quorum-initial-group-size of the quorum queues ensure() declares")
                         if quorum else none("classic queues are not replicated: use queue_type=quorum")),
            fifo=none("competing consumers, prefetch and redeliveries reorder a queue"),
            sessions=none("use one destination per session"),
            retention=native(note="x-message-ttl of the queues ensure() declares"),
            lock_timeout=none("an unacked message stays with its consumer until settled or the channel closes"),
            max_deliveries=emulated(
                note="x-max-length of the marker queue <dest>.max-deliveries, read by every consumer on open; "
                     "past it the core dead-letters on receipt"
                     + ("; quorum queues ensure() declares also get x-delivery-limit" if quorum else "")
            ),
            new_group_backlog=none("a group's queue receives what is sent once it exists: "
                                   "ensure(groups=[...]) before sending"),
            temporary=native(note="ensure(temporary=True): classic queues with x-expires (the temporary_idle option, "
                                  "60 s by default) and an auto-delete exchange: RabbitMQ deletes them once unused, "
                                  "after a crash too"),
            routing=native(note="a message's subject is its routing key; a consumer with subject= binds its group's "
                                "queue with that pattern instead of '#', so the broker never enqueues what it does "
                                "not match (the core still filters: messages queued before, delayed sends). "
                                "Header filters are emulated by the core"),
            max_message_bytes=self.options.max_message_bytes,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def capabilities_for(self, destination: str) -> Capabilities:
        """Priority as provisioned: a destination ensured here without priorities cannot take one."""
        spec = self._specs.get(destination)
        if spec is None or self.options.queue_type == "quorum":
            return self._caps
        levels = spec.max_priority or self.options.priority_levels
        priority = native(limit=levels) if levels else none(
            f"{destination!r} was ensured without max_priority; its queues have no priorities")
        return self._caps.model_copy(update={"priority": priority})

    @property
    def native(self) -> AbstractRobustConnection | None:
        """The aio_pika RobustConnection."""
        return self._connection

    # Connection

    async def open(self) -> None:
        options = self.options
        vhost = unquote(self.url.path[1:]) if len(self.url.path) > 1 else "/"
        tls = self.url.scheme == "amqps"
        kwargs: dict[str, Any] = {
            "host": self.url.host or "localhost",
            "port": self.url.port or (5671 if tls else 5672),
            "login": self.url.username or "guest",
            "password": self.url.password if self.url.password is not None else "guest",
            "virtualhost": vhost,
            "timeout": options.connect_timeout,
            "heartbeat": options.heartbeat,
            "reconnect_interval": options.reconnect_interval,
        }
        if options.connection_name:
            kwargs["client_properties"] = {"connection_name": options.connection_name}
        if tls:
            kwargs["ssl"] = True
            kwargs["ssl_context"] = self._ssl_context()
        hosts = [(host, port or kwargs["port"]) for host, port in self.url.hosts]
        self._connection = await connect_hosts(hosts, **kwargs)
        self._channel = await self._connection.channel(publisher_confirms=options.confirm, on_return_raises=True)

    def _ssl_context(self) -> ssl.SSLContext:
        options = self.options
        try:
            context = ssl.create_default_context(cafile=options.ca_file)
            if options.cert_file:
                context.load_cert_chain(options.cert_file, options.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"rabbitmq: cannot load TLS files: {exc}") from exc
        if not options.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    def _conn(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerConnectionError("rabbitmq: the driver is not connected")
        return self._connection

    # Topology

    def _queue_args(self, destination: str, spec: DestinationSpec | None) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if spec is not None and spec.temporary:  # a classic queue: nothing to replicate, and it expires
            args["x-expires"] = int(self.options.temporary_idle * 1000)
        elif self.options.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
            if spec is not None and spec.max_deliveries:
                args["x-delivery-limit"] = spec.max_deliveries - 1
                args["x-dead-letter-exchange"] = self.dead_letter_destination(destination)
            if spec is not None and spec.replication:
                args["x-quorum-initial-group-size"] = spec.replication
        else:
            levels = spec.max_priority if spec is not None and spec.max_priority else self.options.priority_levels
            if levels:
                args["x-max-priority"] = levels
        if spec is not None and spec.retention:
            args["x-message-ttl"] = int(spec.retention.total_seconds() * 1000)
        return args

    async def _declare(self, kind: str, name: str, **kwargs: Any) -> None:
        """Declare on a throw-away channel (a refusal closes it). One that exists with other
        settings — another app's queue, an exchange of another type — is kept as it is."""
        async with self._conn().channel(publisher_confirms=False) as channel:
            try:
                if kind == "exchange":
                    await channel.declare_exchange(name, ExchangeType.TOPIC, durable=True, **kwargs)
                else:
                    await channel.declare_queue(name, durable=True, **kwargs)
                return
            except amqp_errors.ChannelPreconditionFailed:
                pass
        async with self._conn().channel(publisher_confirms=False) as channel:
            if kind == "exchange":
                await channel.get_exchange(name, ensure=True)
            else:
                await channel.declare_queue(name, passive=True)

    async def _rebind(self, queue: str, exchange: str, bind: Sequence[str], unbind: Sequence[str] = (),
                      channel: AbstractChannel | None = None) -> None:
        """Bind ``queue`` to ``exchange`` with each pattern of ``bind``, then remove those of ``unbind``
        (binding first, so no message that both would take is unroutable in between); on ``channel``,
        or on a throw-away one."""
        if channel is None:
            async with self._conn().channel(publisher_confirms=False) as throwaway:
                await self._rebind(queue, exchange, bind, unbind, throwaway)
            return
        underlay = await channel.get_underlay_channel()
        for pattern in bind:
            await underlay.queue_bind(queue, exchange, routing_key=pattern)
        for pattern in unbind:
            await underlay.queue_unbind(queue, exchange, routing_key=pattern)

    def _narrowed(self, destination: str, patterns: set[str]) -> list[str]:
        """The bindings of a group narrowed to ``patterns``: those and the key delayed sends come back with."""
        return [*sorted(patterns), mapping.delayed_sends(destination)]

    async def declare_exchange(self, name: str, force: bool = False, auto_delete: bool = False) -> None:
        """``auto_delete``: RabbitMQ deletes the exchange once its last queue is gone (temporary)."""
        if force or name not in self._exchanges:
            await self._declare("exchange", name, auto_delete=auto_delete)
            self._exchanges.add(name)

    def spec(self, destination: str) -> DestinationSpec | None:
        """What ensure() provisioned for ``destination`` in this process, if anything."""
        return self._specs.get(destination)

    def group_queue(self, destination: str, group: str | None) -> str:
        return destination if group is None else f"{destination}.{group}"

    async def declare_group(self, destination: str, group: str | None, force: bool = False) -> str:
        """Exchange, queue and binding of one group; returns the queue name.

        Cached per process; ``force`` (ensure) declares again, restoring what was deleted behind our
        back. The binding is ``#``, or the patterns a consumer of this process narrowed the group to.
        """
        queue = self.group_queue(destination, group)
        self._groups.setdefault(destination, set()).add(group)
        if queue in self._queues and not force:
            return queue
        async with self._topology_lock:
            spec = self._specs.get(destination)
            await self.declare_exchange(destination, force, auto_delete=spec is not None and spec.temporary)
            await self._declare("queue", queue, arguments=self._queue_args(destination, spec))
            patterns = self._patterns.get(queue)
            await self._rebind(queue, destination, self._narrowed(destination, patterns) if patterns else [BIND_ALL])
            self._queues.add(queue)
        return queue

    async def route_group(self, channel: AbstractChannel, destination: str, group: str | None,
                          subject: str | None) -> None:
        """Bind a declared group's queue to what a consumer opening wants, on that consumer's channel
        (no channel of its own: concurrent opens churn channels enough).

        ``subject`` None (or ``#``): bind ``#`` again, as another process may have narrowed the
        group. A pattern: bind it and remove ``#``, so the broker no longer enqueues what the
        pattern does not match. Other patterns stay bound.
        """
        queue = self.group_queue(destination, group)
        async with self._topology_lock:
            if subject is None or subject == BIND_ALL:
                self._patterns.pop(queue, None)
                await self._rebind(queue, destination, [BIND_ALL], channel=channel)
            else:
                self._patterns.setdefault(queue, set()).add(subject)
                await self._rebind(queue, destination, self._narrowed(destination, {subject}), [BIND_ALL], channel)

    async def declare_dead_letter(self, destination: str, force: bool = False) -> str:
        """The dead-letter exchange and queue of ``destination``; returns the exchange name."""
        target = self.dead_letter_destination(destination)
        if force or target not in self._queues:
            spec = self._specs.get(destination)
            temporary = DestinationSpec(temporary=True) if spec is not None and spec.temporary else None
            await self.declare_exchange(target, force, auto_delete=temporary is not None)
            await self._declare("queue", target, arguments=self._queue_args(target, temporary))
            await self._rebind(target, target, [BIND_ALL])
            self._queues.add(target)
        return target

    async def declare_delay_queue(self, origin: str, ms: int, into_exchange: bool) -> str:
        """A TTL queue that dead-letters after ``ms`` into exchange ``origin`` or queue ``origin``."""
        name = mapping.delay_queue(origin, ms)
        now = time.monotonic()
        if now - self._delay_queues.get(name, -REDECLARE_EVERY) >= REDECLARE_EVERY:
            args: dict[str, Any] = {
                "x-message-ttl": ms,
                "x-expires": ms + DELAY_QUEUE_GRACE_MS,
                "x-dead-letter-exchange": origin if into_exchange else "",
            }
            if not into_exchange:
                args["x-dead-letter-routing-key"] = origin
            await self._declare("queue", name, arguments=args)
            self._delay_queues[name] = now
        return name

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:
        self._specs[destination] = spec
        await self.declare_group(destination, None, force=True)
        for group in spec.groups:
            await self.declare_group(destination, group, force=True)
        if spec.dead_letter or spec.max_deliveries:
            await self.declare_dead_letter(destination, force=True)
        if spec.max_deliveries and await self.max_deliveries_of(destination) != spec.max_deliveries:
            marker = self._marker(destination)
            async with self._conn().channel(publisher_confirms=False) as channel:
                await (await channel.get_underlay_channel()).queue_delete(marker)
                await channel.declare_queue(marker, durable=True, arguments={"x-max-length": spec.max_deliveries})

    @staticmethod
    def _marker(destination: str) -> str:
        return f"{destination}.max-deliveries"

    async def max_deliveries_of(self, destination: str) -> int | None:
        """The max_deliveries that ensure() recorded for ``destination``, in any process (None: none)."""
        marker = self._marker(destination)
        try:
            async with self._conn().channel(publisher_confirms=False) as channel:
                await channel.declare_queue(marker, passive=True)
        except amqp_errors.ChannelNotFoundEntity:
            return None
        try:
            async with self._conn().channel(publisher_confirms=False) as channel:
                await channel.declare_queue(marker, durable=True, arguments={"x-max-length": 0})
        except amqp_errors.ChannelPreconditionFailed as exc:
            found = _CURRENT.search(str(exc))
            if found:
                return int(found.group(1)) or None
        return None

    # Publishing

    def publish_channel(self) -> AbstractChannel:
        if self._channel is None:
            raise BrokerConnectionError("rabbitmq: the driver is not connected")
        return self._channel

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        await self.declare_exchange(destination)
        persistent = self.options.persistent
        sends = []
        for message in messages:
            if message.delay is not None and message.delay.total_seconds() > 0:
                ms = mapping.delay_bucket(message.delay.total_seconds())
                queue = await self.declare_delay_queue(destination, ms, into_exchange=True)
                props = mapping.properties(message, persistent, {mapping.KEY: message.key or ""})
                sends.append(("", queue, message.body, props))
            elif message.subject is not None:  # routed by subject: the key travels in a header
                props = mapping.properties(message, persistent, {mapping.KEY: message.key or ""})
                sends.append((destination, message.subject, message.body, props))
            else:
                sends.append((destination, message.key or "", message.body, mapping.properties(message, persistent)))
        return await self.send_raw(sends)

    async def send_raw(self, sends: list[tuple[str, str, bytes, Basic.Properties]]) -> list[BaseException | None]:
        """Publish (exchange, routing key, body, properties) tuples pipelined; await all confirms.

        The per-send hot path: no task per call (asyncio.timeout, not wait_for; one send awaited
        directly, not through gather). With confirms a publish need not also wait for the socket
        write (``wait=False``), which would hold aiormq's channel lock until its writer task ran;
        the confirm is awaited anyway.
        """
        timeout = self.options.publish_timeout
        confirm = self.options.confirm
        confirms = self._confirms
        if confirms is not None and not confirms.channel.is_closed:
            channel = confirms.channel
        else:
            # While the connection recovers this waits for the restored channel, at most publish_timeout.
            async with asyncio.timeout(timeout):
                # aiormq.Channel: its basic_publish takes wait=, which the abstract signature omits.
                channel = cast(aiormq.Channel, await self.publish_channel().get_underlay_channel())
            if confirm:
                self._confirms = _Confirms(channel)
        if len(sends) == 1:
            exchange, key, body, props = sends[0]
            result: ConfirmationFrameType | BaseException | None
            try:
                result = await channel.basic_publish(body, exchange=exchange, routing_key=key, properties=props,
                                                     mandatory=True, timeout=timeout, wait=not confirm)
            except Exception as exc:
                result = exc
            return [self._result(result, exchange, key)]
        results = await asyncio.gather(
            *(channel.basic_publish(body, exchange=exchange, routing_key=key, properties=props, mandatory=True,
                                    timeout=timeout, wait=not confirm or len(body) > NO_DRAIN_MAX_BYTES)
              for exchange, key, body, props in sends),
            return_exceptions=True,
        )
        return [self._result(r, exchange, key) for r, (exchange, key, _, _) in zip(results, sends, strict=True)]

    def _result(
        self, result: ConfirmationFrameType | BaseException | None, exchange: str, key: str
    ) -> BaseException | None:
        if result is None or isinstance(result, Basic.Ack):
            return None
        if isinstance(result, amqp_errors.PublishError):
            return NotFound(f"rabbitmq: message unroutable: no queue is bound to exchange {exchange!r} for routing "
                            f"key {key!r}; call broker.ensure() or start a consumer first")
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, amqp_errors.ChannelNotFoundEntity):
                self._exchanges.discard(exchange)  # deleted behind our back: declare it again next time
            return self.map_error(result, f"publish to {exchange or key!r}")
        return PublishError(f"rabbitmq: broker refused message on exchange {exchange!r} ({type(result).__name__})",
                            retryable=True)

    # Consuming and inspection

    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        from unimq_rabbitmq.subscription import QuorumSubscription, RabbitMQSubscription

        kind = QuorumSubscription if self.options.queue_type == "quorum" else RabbitMQSubscription
        return kind(self, destination, group, settings)

    async def stats(self, destination: str, group: str | None) -> Stats:
        queue = self.group_queue(destination, group)
        async with self._conn().channel(publisher_confirms=False) as channel:
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except amqp_errors.ChannelNotFoundEntity:
                raise NotFound(f"rabbitmq: no queue {queue!r} for destination {destination!r}") from None
        depth = declared.declaration_result.message_count
        consumers = declared.declaration_result.consumer_count
        dead = None
        async with self._conn().channel(publisher_confirms=False) as channel:
            try:
                dlq = await channel.declare_queue(self.dead_letter_destination(destination), passive=True)
                dead = dlq.declaration_result.message_count
            except amqp_errors.ChannelNotFoundEntity:
                dead = 0
        return Stats(destination=destination, group=group, depth=depth, dead_letter_depth=dead,
                     detail={"queue": queue, "consumers": consumers})

    async def delete(self, destination: str) -> None:
        """Delete the exchange, the queues of the groups this process knows, the DLQ and delay queues."""
        spec = self._specs.pop(destination, None)
        groups = self._groups.pop(destination, set()) | {None} | set(spec.groups if spec else ())
        queues = {self.group_queue(destination, g) for g in groups}
        dlq = self.dead_letter_destination(destination)
        queues |= {dlq, self._marker(destination)}
        delays = {q for q in self._delay_queues if any(q.startswith(f"{p}.delay.") for p in queues)}
        async with self._conn().channel(publisher_confirms=False) as channel:
            underlay = await channel.get_underlay_channel()
            for queue in sorted(queues | delays):
                await underlay.queue_delete(queue)
                self._queues.discard(queue)
                self._patterns.pop(queue, None)
                self._delay_queues.pop(queue, None)
            for exchange in (destination, dlq):
                await underlay.exchange_delete(exchange)
                self._exchanges.discard(exchange)
