"""``servicebus://``: Azure Service Bus through azure-servicebus (aio). See docs/backends/servicebus.md.

A destination is a queue, or a topic when ``ensure(dest, groups=...)`` made it one; a group is a
subscription of the topic. ``group=None`` reads the queue itself (a topic has no default
subscription: pass a group). Senders are cached per destination, since opening an AMQP link
costs round trips; each consumer has its own receiver.

The dead-letter destination of ``dest`` is ``dest/$DeadLetterQueue``. Consumed with a group it is
that subscription's dead-letter queue; with ``group=None`` it is the queue's, or, for a topic,
every subscription's dead-letter queue read together.

Sessions: whether an entity requires them is read from its properties once per destination (and
group) and cached: through the administration client (Azure), or the test double's control node;
where neither answers (no Manage claim, the official emulator, the double in static mode) the URL's
``sessions`` option decides, and a consumer whose plain receiver is refused because the entity
requires sessions switches to session receivers. The data path never needs the control node.
Sends to a session entity carry the key as session id; consumers of one read it through session
receivers (sessions.py).

Routing is native on topic subscriptions: a consumer of group ``g`` opened with ``subject=`` and/or
``headers=`` leaves the subscription one SQL rule (``mapping.rule_sql``), so Service Bus never
copies into it what the filter does not match; a consumer without a filter restores the
TrueFilter ``$Default``. Rules outlive consumers and the last consumer to open decides (another
process may have narrowed or widened the group since). The core filters every delivery as well:
LIKE is wider than ``*``/``#``, and messages enqueued before the rule changed stay. Queues
(group None) and endpoints without management (static mode, the official emulator, a key without
the Manage claim) are filtered by the core only.

Every SDK call is bounded by ``operation_timeout`` (links opening, sends, settlements, lock
renewals, management): a call that passes it fails with ``Timeout`` naming the entity. Handlers a
consumer is done with close in the background (an SDK close waits up to a second for its
keep-alive task); ``close()`` of the driver waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
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
    AuthenticationError,
    CapabilityError,
    ConfigError,
    ConnectionError,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    Timeout,
    UnimqError,
    wrap,
)
from unimq.message import Delivery, Message
from unimq.url import BrokerURL
from unimq_servicebus import mapping
from unimq_servicebus.admin import Admin, AzureAdmin, ControlAdmin, ControlUnavailable, EntityOptions, Kind
from unimq_servicebus.options import UNMANAGED, ServiceBusOptions, capabilities, check_temporary_idle, endpoint
from unimq_servicebus.sessions import SessionSubscription
from unimq_servicebus.subscription import ServiceBusSubscription

log = logging.getLogger("unimq.servicebus")

SUBSCRIPTIONS = "/Subscriptions/"
#: Service Bus's longest SQL filter: a longer one is left to the core (the group gets everything).
MAX_RULE_SQL = 1024
#: Longest wait at connect for the one question that tells the full double from the other emulators.
PROBE_WAIT = 5.0
T = TypeVar("T")


class ServiceBusDriver(Driver):
    name = "servicebus"
    Options: ClassVar[type[BaseModel]] = ServiceBusOptions
    options: ServiceBusOptions
    DLQ_SUFFIX: ClassVar[str] = "/$DeadLetterQueue"

    def __init__(self, url: BrokerURL, options: ServiceBusOptions) -> None:
        super().__init__(url, options)
        self._endpoint = endpoint(url, options)
        check_temporary_idle(options, self._endpoint)
        self._caps = capabilities(options, options.sessions)
        self._session_caps = capabilities(options, True)
        self._plain_caps = capabilities(options, False)
        self._client: ServiceBusClient | None = None
        self._link_client: ServiceBusClient | None = None
        self._admin: Admin | None = None
        self._senders: dict[str, ServiceBusSender] = {}
        self._sender_locks: dict[str, asyncio.Lock] = {}
        self._opening = asyncio.Lock()
        self._peekers: dict[str, ServiceBusReceiver] = {}
        self._kinds: dict[str, Kind] = {}
        self._sessions: dict[tuple[str, str | None], bool] = {}
        self._timeout = options.operation_timeout
        #: Whether entities can be managed here (None: not known yet).
        self._managed: bool | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: Whether this driver said already that it cannot route natively here (said once).
        self._routing_refused = False

    def __repr__(self) -> str:
        return f"<ServiceBusDriver {self._endpoint!r}>"

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def capabilities_for(self, destination: str) -> Capabilities:
        """Per-key ordering where the destination is known to be a session entity."""
        if destination.endswith(self.DLQ_SUFFIX):
            return self._plain_caps
        known = self._sessions.get((destination, None))
        if known is None:
            return self._caps
        return self._session_caps if known else self._plain_caps

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
        if not ep.emulator:
            self._admin = AzureAdmin(ep)
            return
        control = ControlAdmin(ep, self._timeout)
        self._admin = control
        try:
            async with asyncio.timeout(min(self._timeout, PROBE_WAIT)):
                available = await control.available()
        except (UnimqError, TimeoutError):
            return  # not reachable now: asked again when management is first needed
        if not available:
            self._unmanaged()

    def _unmanaged(self) -> None:
        """No control node here: entities come from the emulator's config file; nothing is managed."""
        admin, self._admin, self._managed = self._admin, None, False
        if admin is not None:
            self.close_later(admin)
        self._caps = capabilities(self.options, self.options.sessions, managed=False)
        self._session_caps = capabilities(self.options, True, managed=False)
        self._plain_caps = capabilities(self.options, False, managed=False)

    def close_later(self, handler: Any) -> None:
        """Close an SDK handler (or the admin) in the background; ``close()`` waits for it."""
        task = asyncio.ensure_future(self._close_quietly(handler))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_quietly(self, handler: Any) -> None:
        with contextlib.suppress(Exception):  # a handler that fails to close is gone either way
            async with asyncio.timeout(self._timeout):
                await handler.close()

    async def bounded(self, call: Awaitable[T], what: str) -> T:
        """``call``, failing with Timeout naming ``what`` after operation_timeout."""
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except TimeoutError:
            raise Timeout(f"servicebus: {what} did not complete within {self._timeout:g}s "
                          "(operation_timeout)") from None

    async def close(self) -> None:
        handlers: list[Any] = [*self._senders.values(), *self._peekers.values()]
        self._senders.clear()
        self._peekers.clear()
        await asyncio.gather(*(self._close_quietly(h) for h in handlers))
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
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

    def _a(self, operation: str) -> Admin:
        if self._admin is None:
            if self._managed is False:
                raise CapabilityError(f"servicebus cannot {operation} here: {UNMANAGED} (declare queues, topics "
                                      "and subscriptions there; docs/backends/servicebus.md)")
            raise ConnectionError("servicebus: the driver is not open")
        return self._admin

    async def _manage(self, call: Awaitable[T], operation: str) -> T:
        """A management request, bounded; an endpoint found to have no control node becomes unmanaged."""
        try:
            return await self.bounded(call, operation)
        except ControlUnavailable:
            self._unmanaged()
            raise CapabilityError(f"servicebus cannot {operation} here: {UNMANAGED}") from None

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
                try:
                    await self.bounded(sender.__aenter__(), f"opening a sender to {destination!r}")
                except BaseException:
                    self.close_later(sender)
                    raise
                self._senders[destination] = sender
                self._sender_locks[destination] = asyncio.Lock()
        return sender

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        sessions = await self.requires_session(destination, None)
        sender = await self._sender(destination)
        # One send at a time per sender: concurrent send_messages on one aio sender break its
        # connection (checked with the plain SDK against the double).
        async with self._sender_locks[destination]:
            try:
                return await self.bounded(self._publish(sender, messages, destination if sessions else None),
                                          f"sending to {destination!r}")
            except Timeout:
                # Unsettled by the broker: the sender's state is unknown, so the next send opens a new one.
                if self._senders.get(destination) is sender:
                    del self._senders[destination]
                    self.close_later(sender)
                raise

    def _outgoing(self, message: Message, session_entity: str | None) -> Any:
        """The SDK message; on a session entity (``session_entity`` names it) with the key as session id."""
        if session_entity is None:
            return mapping.to_servicebus(message)
        session_id = message.key or self.options.default_session_id
        if not session_id:
            raise ConfigError(f"servicebus: {session_entity!r} requires sessions and message "
                              f"{message.message_id} has no key: send it with key=<session id>, or set "
                              "the URL option default_session_id")
        return mapping.to_servicebus(message, session_id)

    async def _publish(self, sender: ServiceBusSender, messages: Sequence[Message],
                       session_entity: str | None) -> list[BaseException | None]:
        if len(messages) == 1:
            await sender.send_messages(self._outgoing(messages[0], session_entity))
            return [None]
        results: list[BaseException | None] = [None] * len(messages)
        batch = await sender.create_message_batch()
        members: list[int] = []
        for index, message in enumerate(messages):
            try:
                outgoing = self._outgoing(message, session_entity)
            except ConfigError as exc:
                results[index] = exc
                continue
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
        if destination.endswith(self.DLQ_SUFFIX):  # dead-letter queues never require sessions
            return ServiceBusSubscription(self, destination, group, prefetch)
        sql = mapping.rule_sql(settings.subject, settings.headers)
        return _Detected(self, destination, group, prefetch, settings.lock_timeout, sql)

    async def requires_session(self, destination: str, group: str | None) -> bool:
        """Whether (destination, group) is a session entity; for sends (group None) to a topic,
        whether any subscription is. Read once from the entity's properties; the sessions option
        decides where they cannot be read (no Manage claim) or the entity does not exist yet."""
        if destination.endswith(self.DLQ_SUFFIX):
            return False
        known = self._sessions.get((destination, group))
        if known is not None:
            return known
        if self._admin is None:
            found: bool | None = self.options.sessions  # no management here: the option decides, once
        else:
            try:
                found = await self._manage(self._admin.requires_session(destination, group),
                                           f"read the properties of {destination!r}")
            except (ClientAuthenticationError, ServiceBusAuthorizationError, CapabilityError):
                found = self.options.sessions  # unreadable for good: decide once, not on every send
        if found is None:
            return self.options.sessions  # not created yet: ask again once it exists
        self._sessions[(destination, group)] = found
        return found

    async def prepare_group(self, destination: str, group: str) -> None:
        """Create a consumer's subscription that does not exist yet, as other backends create a group
        on first use (with requires_session when the URL says sessions=true); NotFound naming it and
        the fix where this key cannot create it."""
        if self._admin is None or (destination, group) in self._sessions:
            return  # nothing to ask here: the receiver's attach tells whether it exists
        entity = mapping.entity_path(destination, group)
        try:
            found = await self._manage(self._admin.requires_session(destination, group),
                                       f"read the properties of {entity!r}")
        except (ClientAuthenticationError, ServiceBusAuthorizationError, CapabilityError):
            return
        if found is not None:
            self._sessions[(destination, group)] = found
            return
        options = EntityOptions(requires_session=True if self.options.sessions else None)
        try:
            await self._manage(self._admin.create_topic(destination, options, (group,)), f"create {entity!r}")
        except (ClientAuthenticationError, ServiceBusAuthorizationError, CapabilityError):
            raise NotFound(f"servicebus: subscription {entity!r} does not exist and this key cannot create it: "
                           f"create it with broker.ensure({destination!r}, groups=[{group!r}]) using a key with "
                           "the Manage claim, or in the portal") from None
        self._kinds[destination] = "topic"
        self._sessions[(destination, group)] = self.options.sessions

    async def route_group(self, destination: str, group: str, sql: str | None) -> None:
        """Leave the subscription ``group`` the single rule ``sql`` (None: the TrueFilter), as a
        consumer of it opens. Where rules cannot be managed (no management here, no Manage claim,
        a double without rule operations) the core's filter is all there is: said once, not an error."""
        if self._admin is None:
            return
        entity = mapping.entity_path(destination, group)
        if sql is not None and len(sql) > MAX_RULE_SQL:
            log.warning("servicebus: the filter of %r is longer than Service Bus's %d characters for a rule: "
                        "the group gets every message and the consumer filters", entity, MAX_RULE_SQL)
            sql = None
        try:
            await self._manage(self._admin.route(destination, group, sql), f"set the rules of {entity!r}")
        except Exception as exc:
            if not _cannot_route(exc):
                raise
            if not self._routing_refused:
                self._routing_refused = True
                log.warning("servicebus: cannot set subscription rules here (%s); consumers with subject= or "
                            "headers= filter what their group receives", exc)

    def learn_sessions(self, destination: str, group: str | None, required: bool) -> None:
        """What a link refusal showed about the entity (where its properties could not be read)."""
        self._sessions[(destination, group)] = required

    def session_client(self) -> ServiceBusClient:
        """The client session receivers come from (retry_total=0, as for consumers' receivers)."""
        if self._link_client is None:
            raise ConnectionError("servicebus: the driver is not open")
        return self._link_client

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
        elif SUBSCRIPTIONS.lower() not in base.lower() and await self.entity_kind(base) == "topic":
            if not dead:
                raise ConfigError(f"servicebus: {base!r} is a topic; consume it with group=<subscription>")
            subs = await self._manage(self._a("list subscriptions").subscriptions(base),
                                      f"list the subscriptions of {base!r}")
            receivers = [client.get_subscription_receiver(base, sub, **common) for sub in subs]
        else:
            receivers = [client.get_queue_receiver(base, **common)]
        try:
            await self.bounded(asyncio.gather(*(r.__aenter__() for r in receivers)),
                               f"opening a receiver of {destination!r}")
        except BaseException:
            for receiver in receivers:
                self.close_later(receiver)
            raise
        return receivers

    async def entity_kind(self, name: str) -> Kind | None:
        """'queue' or 'topic' (cached); None if missing, or unreadable without the Manage claim."""
        kind = self._kinds.get(name)
        if kind is None:
            if self._admin is None:
                return None  # nothing to ask: treat the name as a queue
            try:
                kind = await self._manage(self._admin.kind(name), f"read the kind of {name!r}")
            except (ClientAuthenticationError, ServiceBusAuthorizationError, CapabilityError):
                return None  # no Manage claim, or no management here: treat the name as a queue
            if kind is not None:
                self._kinds[name] = kind
        return kind

    # Administration

    def dead_letter_destination(self, destination: str) -> str:
        return destination + self.DLQ_SUFFIX

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:
        if self._managed is False:
            await self._ensure_declared(destination, spec)
            return
        sessions = spec.sessions or self.options.sessions
        options = EntityOptions(
            lock_duration=_seconds(spec.lock_timeout),
            max_delivery_count=spec.max_deliveries,
            duplicate_detection_window=_seconds(spec.deduplication),
            default_ttl=_seconds(spec.retention),
            requires_session=True if sessions else None,
            dead_lettering_on_message_expiration=True if spec.dead_letter_expired else None,
            auto_delete_on_idle=self.options.temporary_idle if spec.temporary else None,
        )
        admin = self._a("ensure destinations")
        kind = await self._manage(admin.kind(destination), f"read the kind of {destination!r}")
        if spec.groups or kind == "topic":
            if kind == "queue":
                raise ConfigError(f"servicebus: {destination!r} is a queue; groups need a topic "
                                  "(delete the queue, or use another destination name)")
            if sessions:
                for group in spec.groups:
                    await self._check_sessions(destination, group)
            await self._manage(admin.create_topic(destination, options, spec.groups), f"ensure {destination!r}")
            self._kinds[destination] = "topic"
            for group in spec.groups:
                self._sessions.pop((destination, group), None)
        else:
            if sessions and kind == "queue":
                await self._check_sessions(destination, None)
            await self._manage(admin.create_queue(destination, options), f"ensure {destination!r}")
            self._kinds[destination] = "queue"
        self._sessions.pop((destination, None), None)

    async def _ensure_declared(self, destination: str, spec: DestinationSpec) -> None:
        """Without management an entity exists as declared or not at all: ensure() checks that it
        exists, and refuses any setting (it could neither apply nor verify it)."""
        settings = [name for name, value in (
            ("lock_timeout", spec.lock_timeout), ("max_deliveries", spec.max_deliveries),
            ("deduplication", spec.deduplication), ("retention", spec.retention), ("sessions", spec.sessions),
            ("temporary", spec.temporary),
        ) if value]
        if settings:
            raise CapabilityError(f"servicebus cannot honour ensure({', '.join(f'{n}=' for n in settings)}) on "
                                  f"{destination!r}: {UNMANAGED}; set LockDuration, MaxDeliveryCount, "
                                  "RequiresDuplicateDetection, DefaultMessageTimeToLive, RequiresSession or "
                                  "AutoDeleteOnIdle there")
        await self._exists(destination)

    async def _exists(self, destination: str) -> None:
        """NotFound unless the queue or topic exists (opening a sender to it: the attach fails if not)."""
        try:
            await self._sender(destination)
        except Exception as exc:
            error = self.map_error(exc, f"open {destination!r}")
            if isinstance(error, NotFound):
                raise NotFound(f"servicebus: {destination!r} does not exist and cannot be created here: "
                               f"{UNMANAGED}; declare it there") from exc
            raise error from exc

    async def _check_sessions(self, destination: str, group: str | None) -> None:
        """Service Bus cannot turn sessions on for an existing entity: say so instead of failing later."""
        found = await self._manage(self._a("ensure destinations").requires_session(destination, group),
                                   f"read the properties of {destination!r}")
        if found is False:
            entity = mapping.entity_path(destination, group)
            raise ConfigError(f"servicebus: {entity!r} exists without sessions, and Service Bus cannot turn "
                              "requires_session on for an existing entity: delete it, or use another name")

    async def peek(self, destination: str, count: int) -> list[Message]:
        if await self.requires_session(destination, None):
            raise CapabilityError(f"servicebus cannot peek {destination!r}: it requires sessions, and the SDK "
                                  "peeks one locked session at a time; peek its dead-letter queue or use stats()")
        receiver = self._peekers.get(destination)
        if receiver is None:
            [receiver] = await self.open_receivers(destination, None, 0, retry=True)
            self._peekers[destination] = receiver
        dead = destination.endswith(self.DLQ_SUFFIX)
        # sequence_number=1: a receiver otherwise continues after the last message it peeked.
        peeked = await self.bounded(receiver.peek_messages(max_message_count=count, sequence_number=1),
                                    f"peeking {destination!r}")
        return [mapping.to_message(m, dead, self.options.default_session_id) for m in peeked]

    async def stats(self, destination: str, group: str | None) -> Stats:
        if self._managed is False and group is None and not destination.endswith(self.DLQ_SUFFIX):
            await self._exists(destination)  # NotFound is the broker's answer; counts it cannot give
        found = await self._manage(self._a("read stats").stats(destination, group), f"stats of {destination!r}")
        return Stats(destination=destination, group=group, depth=found.depth, in_flight=found.in_flight,
                     dead_letter_depth=found.dead_letter_depth, detail=found.detail)

    async def destinations(self) -> list[str]:
        return await self._manage(self._a("list destinations").names(), "list destinations")

    async def delete(self, destination: str) -> None:
        admin = self._a("delete destinations")
        for cache in (self._senders, self._peekers):
            handler = cache.pop(destination, None)
            if handler is not None:
                self.close_later(handler)
        self._kinds.pop(destination, None)
        for known in [k for k in self._sessions if k[0] == destination]:
            del self._sessions[known]
        await self._manage(admin.delete(destination), f"delete {destination!r}")

    def map_error(self, exc: BaseException, context: str) -> UnimqError:
        if isinstance(exc, UnimqError):
            return exc
        detail = f"{context}: {type(exc).__name__}: {exc}"
        if isinstance(exc, MessagingEntityNotFoundError | ResourceNotFoundError):
            return NotFound(detail)
        if isinstance(exc, MessageSizeExceededError):
            return MessageTooLarge(detail)
        if isinstance(exc, ServiceBusAuthenticationError | ClientAuthenticationError):
            return AuthenticationError(f"{detail} (check the SAS policy, key or Azure AD credential)")
        if isinstance(exc, ServiceBusAuthorizationError):
            return PermissionDenied(f"{detail} (the SAS policy or Azure AD role lacks the claim this needs)")
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


def _session_required(exc: BaseException) -> bool:
    """A plain receiver refused because the entity requires sessions (the service's words, or the double's)."""
    text = str(exc).lower()
    return isinstance(exc, ServiceBusError) and "session" in text and (
        "requires_session is true" in text or "requires sessions" in text)


def _cannot_route(exc: BaseException) -> bool:
    """Rules cannot be managed with this endpoint or key (as opposed to a failure worth raising)."""
    if isinstance(exc, CapabilityError | ClientAuthenticationError | ServiceBusAuthorizationError):
        return True
    return isinstance(exc, HttpResponseError) and exc.status_code in (401, 403)


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


class _Detected(Subscription):
    """A consumer's reader, chosen on open: session receivers for a session entity, else plain ones."""

    #: Service Bus dead-letters natively (DeadLetterReason / DeadLetterErrorDescription).
    native_reject: ClassVar[bool] = True

    def __init__(self, driver: ServiceBusDriver, destination: str, group: str | None, prefetch: int,
                 lock_timeout: float | None, sql: str | None = None) -> None:
        self._driver = driver
        self._args = (destination, group, prefetch)
        self._lock_timeout = lock_timeout
        #: The group's filter as a subscription rule (None: none, the TrueFilter).
        self._sql = sql
        self._inner: ServiceBusSubscription | SessionSubscription | None = None
        self._buffer: deque[Delivery] | None = None

    @property
    def _unread(self) -> deque[Delivery] | None:
        """The core's buffer, which the reader in use must reach: it forgets the deliveries of a
        lost receiver there (``discard_unread``)."""
        return self._buffer

    @_unread.setter
    def _unread(self, buffer: deque[Delivery] | None) -> None:
        self._buffer = buffer
        if self._inner is not None:
            self._inner._unread = buffer

    @property
    def lock_timeout(self) -> float | None:
        """The lock of the reader in use, once it knows it."""
        return self._inner.lock_timeout if self._inner is not None else None

    @lock_timeout.setter
    def lock_timeout(self, value: float | None) -> None:
        if self._inner is not None:
            self._inner.lock_timeout = value

    @property
    def inner(self) -> ServiceBusSubscription | SessionSubscription:
        """The ServiceBusSubscription or SessionSubscription in use (once open)."""
        if self._inner is None:
            raise ConnectionError("servicebus: the consumer is not open")
        return self._inner

    async def open(self) -> None:
        destination, group, prefetch = self._args
        if group is not None:
            await self._driver.prepare_group(destination, group)
            await self._driver.route_group(destination, group, self._sql)
        if await self._driver.requires_session(destination, group):
            await self._use(SessionSubscription(self._driver, destination, group, prefetch, self._lock_timeout))
            return
        try:
            await self._use(ServiceBusSubscription(self._driver, destination, group, prefetch))
        except Exception as exc:
            if not _session_required(exc):
                raise
            # The entity requires sessions though nothing said so (no management here): read it as one.
            self._driver.learn_sessions(destination, group, True)
            await self._use(SessionSubscription(self._driver, destination, group, prefetch, self._lock_timeout))

    async def _use(self, inner: ServiceBusSubscription | SessionSubscription) -> None:
        """Read with ``inner`` from now on, on the core's buffer; open it."""
        inner._unread = self._buffer
        self._inner = inner
        await inner.open()

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        return await self.inner.receive(max_messages, timeout)

    async def ack(self, delivery: Delivery) -> None:
        await self.inner.ack(delivery)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await self.inner.ack_many(deliveries)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        await self.inner.nack(delivery, delay)

    async def reject(self, delivery: Delivery, reason: str) -> None:
        await self.inner.reject(delivery, reason)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        await self.inner.extend(delivery, seconds)

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
