"""``servicebus://``: Azure Service Bus through azure-servicebus (aio). See docs/backends/servicebus.md.

A destination is a queue, or a topic when ``ensure(dest, groups=...)`` made it one; a group is a
subscription of the topic. ``group=None`` reads the queue itself (a topic has no default
subscription: pass a group). Senders are cached per destination, since opening an AMQP link
costs round trips; each consumer has its own receiver.

The dead-letter destination of ``dest`` is ``dest/$DeadLetterQueue``. Consumed with a group it is
that subscription's dead-letter queue; with ``group=None`` it is the queue's, or, for a topic,
every subscription's dead-letter queue read together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue, TransportType
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
)
from pydantic import BaseModel

from unimq.capabilities import Capabilities
from unimq.driver import DestinationSpec, Driver, ReceiveSettings, Stats, Subscription
from unimq.errors import (
    CapabilityError,
    ConfigError,
    ConnectionError,
    MessageTooLarge,
    NotFound,
    Timeout,
    UnimqError,
    wrap,
)
from unimq.message import Message
from unimq.url import BrokerURL
from unimq_servicebus import mapping
from unimq_servicebus.admin import Admin, AzureAdmin, ControlAdmin, EntityOptions, Kind
from unimq_servicebus.options import ServiceBusOptions, capabilities, endpoint
from unimq_servicebus.subscription import ServiceBusSubscription

SUBSCRIPTIONS = "/Subscriptions/"


class ServiceBusDriver(Driver):
    name = "servicebus"
    Options: ClassVar[type[BaseModel]] = ServiceBusOptions
    options: ServiceBusOptions
    DLQ_SUFFIX: ClassVar[str] = "/$DeadLetterQueue"

    def __init__(self, url: BrokerURL, options: ServiceBusOptions) -> None:
        super().__init__(url, options)
        self._endpoint = endpoint(url, options)
        self._caps = capabilities(options)
        self._client: ServiceBusClient | None = None
        self._link_client: ServiceBusClient | None = None
        self._admin: Admin | None = None
        self._senders: dict[str, ServiceBusSender] = {}
        self._sender_locks: dict[str, asyncio.Lock] = {}
        self._opening = asyncio.Lock()
        self._peekers: dict[str, ServiceBusReceiver] = {}
        self._kinds: dict[str, Kind] = {}

    def __repr__(self) -> str:
        return f"<ServiceBusDriver {self._endpoint!r}>"

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def native(self) -> Any:
        """The ``azure.servicebus.aio.ServiceBusClient``."""
        return self._client

    async def open(self) -> None:
        ep = self._endpoint
        kwargs: dict[str, Any] = {}
        if self.options.transport == "amqp_ws":
            kwargs["transport_type"] = TransportType.AmqpOverWebsocket
        # Senders and consumers' receivers get a client of their own with retry_total=0: the core
        # retries sends (with jitter), and a consumer replaces a failed receiver instead of letting
        # the SDK reopen it in place (see subscription.py). Peekers keep the SDK's reconnects.
        if ep.connection_string:
            self._client = ServiceBusClient.from_connection_string(ep.connection_string, **kwargs)
            self._link_client = ServiceBusClient.from_connection_string(ep.connection_string, retry_total=0,
                                                                        **kwargs)
        else:
            self._client = ServiceBusClient(ep.namespace, ep.credential, **kwargs)
            self._link_client = ServiceBusClient(ep.namespace, ep.credential, retry_total=0, **kwargs)
        self._admin = ControlAdmin(ep) if ep.emulator else AzureAdmin(ep)

    async def close(self) -> None:
        handlers: list[Any] = [*self._senders.values(), *self._peekers.values()]
        self._senders.clear()
        self._peekers.clear()
        await asyncio.gather(*(h.close() for h in handlers), return_exceptions=True)
        if self._admin is not None:
            await self._admin.close()
        for client in (self._link_client, self._client):
            if client is not None:
                await client.close()
        credential = self._endpoint.credential
        if credential is not None and hasattr(credential, "close"):
            await credential.close()

    def _c(self) -> ServiceBusClient:
        if self._client is None:
            raise ConnectionError("servicebus: the driver is not open")
        return self._client

    def _a(self) -> Admin:
        if self._admin is None:
            raise ConnectionError("servicebus: the driver is not open")
        return self._admin

    # Sending

    async def _sender(self, destination: str) -> ServiceBusSender:
        sender = self._senders.get(destination)
        if sender is not None:
            return sender
        async with self._opening:
            sender = self._senders.get(destination)
            if sender is None:
                if self._link_client is None:
                    raise ConnectionError("servicebus: the driver is not open")
                sender = self._link_client.get_queue_sender(destination)
                await sender.__aenter__()
                self._senders[destination] = sender
                self._sender_locks[destination] = asyncio.Lock()
        return sender

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        sender = await self._sender(destination)
        # One send at a time per sender: concurrent send_messages on one aio sender break its
        # connection (checked with the plain SDK against the double).
        async with self._sender_locks[destination]:
            return await self._publish(sender, messages)

    async def _publish(self, sender: ServiceBusSender, messages: Sequence[Message]) -> list[BaseException | None]:
        if len(messages) == 1:
            await sender.send_messages(mapping.to_servicebus(messages[0]))
            return [None]
        results: list[BaseException | None] = [None] * len(messages)
        batch = await sender.create_message_batch()
        members: list[int] = []
        for index, message in enumerate(messages):
            try:
                outgoing = mapping.to_servicebus(message)
            except ValueError as exc:
                results[index] = ConfigError(f"servicebus: message {message.message_id}: {exc}")
                continue
            try:
                batch.add_message(outgoing)
            except MessageSizeExceededError:
                if members:
                    await self._send_batch(sender, batch, members, results)
                batch = await sender.create_message_batch()
                members = []
                try:
                    batch.add_message(outgoing)
                except MessageSizeExceededError as exc:
                    results[index] = MessageTooLarge(f"servicebus: message {message.message_id} does not fit "
                                                     f"in a batch of at most {batch.max_size_in_bytes} bytes: {exc}")
                    continue
            members.append(index)
        if members:
            await self._send_batch(sender, batch, members, results)
        return results

    async def _send_batch(self, sender: ServiceBusSender, batch: Any, members: list[int],
                          results: list[BaseException | None]) -> None:
        try:
            await sender.send_messages(batch)
        except Exception as exc:
            error = self.map_error(exc, "publish")
            for index in members:
                results[index] = error

    # Receiving

    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        prefetch = self.options.prefetch if self.options.prefetch is not None else settings.prefetch
        return ServiceBusSubscription(self, destination, group, prefetch)

    async def open_receivers(self, destination: str, group: str | None, prefetch: int, *,
                             retry: bool = False) -> list[ServiceBusReceiver]:
        """The receivers a consumer of (destination, group) reads, opened; ``retry``: the SDK
        reopens them inside a failing call (only for a handler used by one call at a time)."""
        client = self._c() if retry else self._link_client
        if client is None:
            raise ConnectionError("servicebus: the driver is not open")
        mode = (ServiceBusReceiveMode.PEEK_LOCK if self.options.receive_mode == "peek_lock"
                else ServiceBusReceiveMode.RECEIVE_AND_DELETE)
        common: dict[str, Any] = {"receive_mode": mode, "prefetch_count": prefetch}
        base, dead = destination, destination.endswith(self.DLQ_SUFFIX)
        if dead:
            base = destination[: -len(self.DLQ_SUFFIX)]
            common["sub_queue"] = ServiceBusSubQueue.DEAD_LETTER
        receivers: list[ServiceBusReceiver]
        if group is not None:
            receivers = [client.get_subscription_receiver(base, group, **common)]
        elif SUBSCRIPTIONS.lower() not in base.lower() and await self._kind(base) == "topic":
            if not dead:
                raise ConfigError(f"servicebus: {base!r} is a topic; consume it with group=<subscription>")
            subs = await self._a().subscriptions(base)
            receivers = [client.get_subscription_receiver(base, sub, **common) for sub in subs]
        else:
            receivers = [client.get_queue_receiver(base, **common)]
        try:
            await asyncio.gather(*(r.__aenter__() for r in receivers))
        except BaseException:
            await asyncio.gather(*(r.close() for r in receivers), return_exceptions=True)
            raise
        return receivers

    async def _kind(self, name: str) -> Kind | None:
        kind = self._kinds.get(name)
        if kind is None:
            try:
                kind = await self._a().kind(name)
            except (ClientAuthenticationError, ServiceBusAuthorizationError):
                return None  # no Manage claim: treat the name as a queue
            if kind is not None:
                self._kinds[name] = kind
        return kind

    # Administration

    def dead_letter_destination(self, destination: str) -> str:
        return destination + self.DLQ_SUFFIX

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:
        refused = [name for name, value in (("sessions", spec.sessions), ("fifo", spec.fifo),
                                            ("replication", spec.replication))
                   if value]
        if spec.partitions not in (None, 1):
            refused.append("partitions")
        if refused:
            raise CapabilityError(f"servicebus cannot honour ensure({', '.join(f'{n}=' for n in refused)}): "
                                  "sessions, partitioning and FIFO are not implemented by this adapter")
        options = EntityOptions(
            lock_duration=_seconds(spec.lock_timeout),
            max_delivery_count=spec.max_deliveries,
            duplicate_detection_window=_seconds(spec.deduplication),
            default_ttl=_seconds(spec.retention),
        )
        admin = self._a()
        kind = await admin.kind(destination)
        if spec.groups or kind == "topic":
            if kind == "queue":
                raise ConfigError(f"servicebus: {destination!r} is a queue; groups need a topic "
                                  "(delete the queue, or use another destination name)")
            await admin.create_topic(destination, options, spec.groups)
            self._kinds[destination] = "topic"
        else:
            await admin.create_queue(destination, options)
            self._kinds[destination] = "queue"

    async def peek(self, destination: str, count: int) -> list[Message]:
        receiver = self._peekers.get(destination)
        if receiver is None:
            [receiver] = await self.open_receivers(destination, None, 0, retry=True)
            self._peekers[destination] = receiver
        dead = destination.endswith(self.DLQ_SUFFIX)
        # sequence_number=1: a receiver otherwise continues after the last message it peeked.
        peeked = await receiver.peek_messages(max_message_count=count, sequence_number=1)
        return [mapping.to_message(m, dead) for m in peeked]

    async def stats(self, destination: str, group: str | None) -> Stats:
        found = await self._a().stats(destination, group)
        return Stats(destination=destination, group=group, depth=found.depth, in_flight=found.in_flight,
                     dead_letter_depth=found.dead_letter_depth, detail=found.detail)

    async def destinations(self) -> list[str]:
        return await self._a().names()

    async def delete(self, destination: str) -> None:
        for cache in (self._senders, self._peekers):
            handler = cache.pop(destination, None)
            if handler is not None:
                await handler.close()
        self._kinds.pop(destination, None)
        await self._a().delete(destination)

    def map_error(self, exc: BaseException, context: str) -> UnimqError:
        if isinstance(exc, UnimqError):
            return exc
        detail = f"{context}: {type(exc).__name__}: {exc}"
        if isinstance(exc, MessagingEntityNotFoundError | ResourceNotFoundError):
            return NotFound(detail)
        if isinstance(exc, MessageSizeExceededError):
            return MessageTooLarge(detail)
        if isinstance(exc, ServiceBusAuthenticationError | ServiceBusAuthorizationError | ClientAuthenticationError):
            return ConfigError(f"{detail} (check the SAS policy, key or Azure AD role)")
        if isinstance(exc, OperationTimeoutError):
            return Timeout(detail)
        if isinstance(exc, ServiceBusConnectionError | ServiceBusCommunicationError | ServiceRequestError):
            return ConnectionError(detail)
        if isinstance(exc, ResourceExistsError):
            return ConfigError(detail)
        if isinstance(exc, ServiceBusError):
            return UnimqError(detail, retryable=bool(getattr(exc, "_retryable", False)))
        if isinstance(exc, ValueError):
            return ConfigError(detail)
        return wrap(exc, context)


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()

