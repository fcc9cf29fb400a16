"""The AMQP 1.0 side of the double: a python-qpid-proton reactor that speaks Service Bus.

One reactor thread does everything (AMQP I/O, broker state, timers), so the broker state in
:mod:`.entities` needs no locks. Other threads (tests, ``ServiceBusDouble.configure_entity``) hand
work to that thread through an :class:`~proton.reactor.EventInjector`.

Link roles, by address (see docs/servicebus-double.md):

* client sender -> ``<queue|topic>``: messages (single or SDK batch) are stored;
* client receiver <- ``<queue>``, ``<topic>/Subscriptions/<sub>``, ``.../$DeadLetterQueue``:
  deliveries, peek-lock when the client asks for ``rcv-settle-mode = second``;
* ``$cbs``, ``<entity>/$management``, ``$unimq-control``: request/response nodes; a request
  arrives on the client's sender link and the reply goes out on the client's receiver link
  attached to the same node on the same connection.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
import json
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import parse_qs, quote_plus

from proton import UNDESCRIBED, Array, Condition, Data, Delivery, Link, Message, Terminus, int32, symbol, timestamp
from proton.reactor import ApplicationEvent, Container, EventInjector

from .codec import StoredMessage, now_ms, split_sections, unpack_transfer
from .entities import ARGUMENT_ERROR, ENTITY_NOT_FOUND, TIMEOUT, Broker, Queue, ServiceBusError, Topic, entity_path
from .persistence import SnapshotStore

log = logging.getLogger("unimq.servicebus_double")

CBS_NODE = "$cbs"
CONTROL_NODE = "$unimq-control"
MANAGEMENT_SUFFIX = "/$management"
SESSION_FILTER = symbol("com.microsoft:session-filter")
LOCKED_UNTIL_UTC = symbol("com.microsoft:locked-until-utc")
LINK_TIMEOUT = symbol("com.microsoft:timeout")
TRACKING_ID = "com.microsoft:tracking-id"
DEAD_LETTER_CONDITION = "com.microsoft:dead-letter"
DATETIMEOFFSET_EPOCH = 621355968000000000  # .NET ticks at the Unix epoch
MAX_MESSAGE_SIZE = 1024 * 1024
_reply_tags = itertools.count(1)
_UNDESCRIBED: Any = UNDESCRIBED  # proton's stub does not list its constant among AMQP data
INCOMING_CREDIT = 500
TICK_SECONDS = 0.05
DEFAULT_SESSION_WAIT_MS = 60_000
#: The official emulator's shared access policy (its connection string's key name and key).
DEFAULT_KEYS = {"RootManageSharedAccessKey": "SAS_KEY_VALUE"}

# Settlement names used by $management update-disposition -> our outcome names.
DISPOSITION_STATUS = {"completed": "complete", "abandoned": "abandon",
                      "suspended": "dead-letter", "defered": "defer"}


class _Consumer:
    """A client receiver link, as seen by an entity: credit in, encoded deliveries out."""

    def __init__(self, link: Link, peek_lock: bool):
        self.link = link
        self.peek_lock = peek_lock
        self.session_id: str | None = None
        self._tags = itertools.count(1)

    def credit(self) -> int:
        return self.link.credit

    def deliver(self, payload: bytes, token: uuid.UUID | None) -> None:
        # The SDK reads the lock token back from the delivery tag: uuid.UUID(bytes_le=tag).
        tag = token.bytes_le if token is not None else str(next(self._tags)).encode()
        delivery = self.link.delivery(tag)  # type: ignore[arg-type]  # proton's stub says str; bytes work
        delivery.lock_token = token  # python-qpid-proton returns tags as text, so keep the UUID
        self.link.stream(payload)
        self.link.advance()
        if not self.peek_lock:
            delivery.settle()

    def after_pump(self) -> None:
        if self.link.drain_mode and self.link.credit > 0:
            self.link.drained()

    def lose_session(self) -> None:
        _close_with_error(self.link, "com.microsoft:session-lock-lost", "The session lock has expired.")


def _close_with_error(endpoint: Any, condition: str, description: str) -> None:
    endpoint.condition = Condition(condition, description)
    endpoint.close()


def _error(condition: str, description: str) -> Condition:
    """A rejected outcome's error. The SDK reads the error's three fields by position, and proton
    leaves out an empty ``info`` (a send rejected that way never completes in the SDK), so the
    error carries a tracking id as Service Bus errors do."""
    return Condition(condition, description, {symbol(TRACKING_ID): str(uuid.uuid4())})


def _as_list(value: Any) -> list[Any]:
    """AMQP arrays decode as ``proton.Array``; lists stay lists."""
    if value is None:
        return []
    if isinstance(value, Array):
        return list(value.elements)
    return list(value)


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


class _Reply:
    """Outcome of a request/response operation."""

    def __init__(self, status: int = 200, body: Any = None, description: str = "OK",
                 condition: str | None = None):
        self.status, self.body, self.description, self.condition = status, body, description, condition


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Log a handler's unexpected exception instead of letting it stop the reactor (and every test)."""

    @functools.wraps(method)
    def wrapper(self: Any, event: Any) -> None:
        try:
            method(self, event)
        except Exception:
            log.exception("Service Bus double: error while handling %s", event.type)

    return wrapper


class _Handler:
    """Proton event handler: connection plumbing plus routing of links to the broker."""

    def __init__(self, broker: Broker, host: str, port: int, listening: threading.Event,
                 store: SnapshotStore | None = None, keys: dict[str, str] | None = None):
        self.broker = broker
        #: Shared access policies: name -> key (the official emulator's by default).
        self.keys = dict(keys or DEFAULT_KEYS)
        self.store = store
        #: Set by every event that may change durable state; a periodic snapshot clears it.
        self.dirty = False
        self.host, self.port = host, port
        self.listening = listening
        self.injector = EventInjector()
        self.calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self.acceptor: Any = None
        self.container: Any = None

    # ------------------------------------------------------------- lifecycle

    def on_reactor_init(self, event: Any) -> None:
        self.container = event.container
        self.container.selectable(self.injector)
        self.acceptor = self.container.acceptor(self.host, self.port)
        sock = self.acceptor._selectable._delegate  # the listening socket, to learn an ephemeral port
        self.port = sock.getsockname()[1]
        log.info("Service Bus double listening on %s:%d", self.host, self.port)
        self.listening.set()
        self.container.schedule(TICK_SECONDS, self)

    def on_timer_task(self, event: Any) -> None:
        try:
            self.broker.tick(now_ms())
            if self.store is not None and self.dirty and self.store.due():
                self.dirty = False
                self.store.save(self.broker)
        except Exception:
            log.exception("Service Bus double: error in the timer tick")
        self.container.schedule(TICK_SECONDS, self)

    def on_call(self, event: Any) -> None:
        """Run a function handed over by another thread (see ServiceBusDouble.call)."""
        self.dirty = True
        function, future = self.calls.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(function())
            except BaseException as exc:  # handed back to the calling thread
                future.set_exception(exc)

    def on_stop(self, event: Any) -> None:
        if self.store is not None:
            try:
                self.store.save(self.broker)
            except Exception:
                log.exception("Service Bus double: could not write the final snapshot")
        if self.acceptor is not None:
            self.acceptor.close()
        self.injector.close()
        self.container.stop()

    # ------------------------------------------------------------ connections

    def on_connection_bound(self, event: Any) -> None:
        # The SDK in emulator mode skips SASL or uses ANONYMOUS, then authenticates through CBS.
        # proton's built-in SASL server (no Cyrus) can only verify ANONYMOUS, so that is all we offer.
        sasl = event.transport.sasl()
        sasl.allow_insecure_mechs = True
        sasl.allowed_mechs("ANONYMOUS")

    def on_connection_remote_open(self, event: Any) -> None:
        connection = event.connection
        connection.container = "unimq-servicebus-double"
        connection.reply_links = {}
        connection.open()

    def on_connection_remote_close(self, event: Any) -> None:
        event.connection.close()

    def on_session_remote_open(self, event: Any) -> None:
        event.session.open()

    def on_session_remote_close(self, event: Any) -> None:
        event.session.close()

    def on_transport_closed(self, event: Any) -> None:
        connection = event.connection
        if connection is None:
            return
        link = connection.link_head(0)
        while link:
            self._forget_link(link)
            link = link.next(0)

    # ------------------------------------------------------------------ links

    @_guarded
    def on_link_remote_open(self, event: Any) -> None:
        self.dirty = True
        link = event.link
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        try:
            if link.is_sender:
                self._open_outgoing(link)
            else:
                self._open_incoming(link)
        except ServiceBusError as exc:
            log.info("refusing link %s: %s", link.name, exc.description)
            # As Service Bus refuses an attach: the reply has no terminus on our side, then a
            # detach carries the error (the SDK raises it from the open, mapped by condition).
            (link.target if link.is_receiver else link.source).type = Terminus.UNSPECIFIED
            link.open()
            _close_with_error(link, exc.condition, exc.description)

    def _is_request_node(self, address: str) -> bool:
        """``$cbs``, ``<entity>/$management`` and (not in static mode) ``$unimq-control``."""
        lowered = address.lower()
        if lowered == CONTROL_NODE and self.broker.static:
            raise ServiceBusError(ENTITY_NOT_FOUND, f"The messaging entity '{address}' could not be found "
                                  "(static mode has no control node)", 404)
        return lowered in (CBS_NODE, CONTROL_NODE) or lowered.endswith(MANAGEMENT_SUFFIX)

    @staticmethod
    def _check_authorized(link: Link) -> None:
        """A connection whose SAS token was refused gets no entity link, as on Service Bus."""
        if getattr(link.connection, "unauthorized", False):
            raise ServiceBusError("amqp:unauthorized-access", "Unauthorized access: the SAS token of this "
                                  "connection was refused (wrong key or policy)", 401)

    def _open_incoming(self, link: Link) -> None:
        """The client sends: to an entity, or requests to a request/response node."""
        address = entity_path(link.remote_target.address or "")
        if self._is_request_node(address):
            link.request_node = address
        else:
            self._check_authorized(link)
            link.entity = self.broker.for_send(address)
            link.max_message_size = MAX_MESSAGE_SIZE
        link.open()
        link.flow(INCOMING_CREDIT)

    def _open_outgoing(self, link: Link) -> None:
        """The client receives: replies from a request/response node, or messages from an entity."""
        address = entity_path(link.remote_source.address or "")
        if self._is_request_node(address):
            link.connection.reply_links[address.lower()] = link
            link.open()
            return
        self._check_authorized(link)
        entity = self.broker.for_receive(address)
        consumer = _Consumer(link, peek_lock=link.remote_rcv_settle_mode == Link.RCV_SECOND)
        link.consumer = consumer
        link.entity = entity
        filters = _read_filter(link.remote_source)
        wants_session = SESSION_FILTER in filters
        if wants_session != entity.config.requires_session:
            raise ServiceBusError("amqp:not-allowed",
                                  f"{entity.name}: requires_session is {entity.config.requires_session}; "
                                  f"the receiver {'asked' if wants_session else 'did not ask'} for a session")
        if not wants_session:
            link.open()
            entity.add_consumer(consumer)
            return
        requested = filters[SESSION_FILTER]
        now = now_ms()
        session_id = entity.acquire_session(consumer, None if requested is None else str(requested), now)
        if session_id is not None:
            self._grant_session(link, entity, consumer, session_id)
            return
        wait_ms = int((link.remote_properties or {}).get(LINK_TIMEOUT, DEFAULT_SESSION_WAIT_MS))

        def granted(session: str | None) -> None:
            if session is None:
                # As Service Bus refuses the link: an attach without a source, then a detach with
                # the error (the SDK raises it as OperationTimeoutError).
                link.source.type = Terminus.UNSPECIFIED
                link.open()
                _close_with_error(link, TIMEOUT, "No unlocked session with messages became available.")
            else:
                self._grant_session(link, entity, consumer, session)

        entity.wait_for_session(consumer, now + wait_ms, granted)

    def _grant_session(self, link: Link, entity: Queue, consumer: _Consumer, session_id: str) -> None:
        link.source.filter.clear()
        link.source.filter.put_dict({SESSION_FILTER: session_id})
        until = entity.session_locks[session_id].until_ms
        link.properties = {LOCKED_UNTIL_UTC: until * 10_000 + DATETIMEOFFSET_EPOCH}
        link.open()
        entity.add_consumer(consumer)

    @_guarded
    def on_link_remote_close(self, event: Any) -> None:
        self._forget_link(event.link)
        event.link.close()

    def _forget_link(self, link: Link) -> None:
        consumer = getattr(link, "consumer", None)
        if consumer is not None:
            link.entity.remove_consumer(consumer)
            link.consumer = None

    @_guarded
    def on_link_flow(self, event: Any) -> None:
        self.dirty = True
        link = event.link
        consumer = getattr(link, "consumer", None)
        if link.is_sender and consumer is not None:
            link.entity.pump()
            if link.drain_mode and link.credit > 0:
                link.drained()

    # ------------------------------------------------------------- deliveries

    @_guarded
    def on_delivery(self, event: Any) -> None:
        self.dirty = True
        delivery = event.delivery
        link = event.link
        if link.is_receiver:
            if delivery.readable and not delivery.partial:
                payload = link.recv(delivery.pending)
                link.advance()
                self._on_transfer(link, delivery, payload)
                if link.credit < INCOMING_CREDIT // 2:
                    link.flow(INCOMING_CREDIT - link.credit)
        elif delivery.updated and delivery.local_state == 0:
            # Also when the client settled in the same frame (the SDK releases buffered messages
            # on close that way): the outcome still applies, as on Service Bus.
            self._on_disposition(link, delivery)

    def _on_transfer(self, link: Link, delivery: Delivery, payload: bytes) -> None:
        try:
            if getattr(link, "request_node", None):
                self._on_request(link, payload)
            else:
                self._store(link.entity, payload)
            delivery.update(Delivery.ACCEPTED)
        except (ServiceBusError, ValueError) as exc:
            condition = getattr(exc, "condition", "amqp:decode-error")
            delivery.local.condition = _error(condition, str(exc))
            delivery.update(Delivery.REJECTED)
        delivery.settle()

    def _store(self, entity: Any, payload: bytes) -> list[int | None]:
        now = now_ms()
        messages = [StoredMessage(sections) for sections in unpack_transfer(payload)]
        for message in messages:
            entity.check_sendable(message)
        return [entity.enqueue(message, now) for message in messages]

    def _on_disposition(self, link: Link, delivery: Delivery) -> None:
        state = delivery.remote_state
        remote = delivery.remote
        reason = description = None
        if state == Delivery.ACCEPTED:
            outcome = "complete"
        elif state == Delivery.RELEASED:
            outcome = "release"
        elif state == Delivery.MODIFIED:
            outcome = "defer" if remote.undeliverable else "abandon"
        elif state == Delivery.REJECTED:
            outcome = "dead-letter"
            condition = remote.condition
            info: Any = (condition.info if condition else None) or {}
            reason = info.get("DeadLetterReason")
            description = info.get("DeadLetterErrorDescription")
        else:
            return
        try:
            link.entity.settle(delivery.lock_token, outcome, reason, description)
            delivery.update(state)
        except ServiceBusError as exc:
            delivery.local.condition = _error(exc.condition, exc.description)
            delivery.update(Delivery.REJECTED)
        delivery.settle()

    # ------------------------------------------------------- request/response

    def _on_request(self, link: Link, payload: bytes) -> None:
        request = Message()
        request.decode(payload)
        node = link.request_node
        properties: dict[Any, Any] = request.properties or {}
        operation = str(properties.get("operation", ""))
        if node.lower() == CBS_NODE:
            reply = self._put_token(request.body)
            if reply.status >= 400:
                link.connection.unauthorized = True
        else:
            try:
                body: Any = request.body or {}
                if node.lower() == CONTROL_NODE:
                    reply = self._control(operation, body)
                else:
                    reply = self._management(node, operation, body)
            except ServiceBusError as exc:
                reply = _Reply(exc.status, None, exc.description, exc.condition)
        self._send_reply(link, request, reply)

    def _put_token(self, token: Any) -> _Reply:
        """CBS put-token: a SAS token must be signed with the key of the policy it names, as Service
        Bus checks it (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-sas)."""
        text = token.decode() if isinstance(token, bytes) else str(token or "")
        prefix = "SharedAccessSignature "
        fields = {k: v[0] for k, v in parse_qs(text[len(prefix):]).items()} if text.startswith(prefix) else {}
        key = self.keys.get(fields.get("skn", ""))
        expiry = fields.get("se", "")
        if key is None or not expiry.isdigit() or "sr" not in fields or "sig" not in fields:
            return _Reply(401, None, "InvalidSignature: unknown policy or malformed SharedAccessSignature")
        expected = base64.b64encode(hmac.new(key.encode(), f"{quote_plus(fields['sr'])}\n{expiry}".encode(),
                                             hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, fields["sig"]):
            return _Reply(401, None, "InvalidSignature: The token has an invalid signature.")
        if int(expiry) < now_ms() // 1000:
            return _Reply(401, None, "ExpiredToken: The token is expired.")
        return _Reply(202, None, "Accepted")

    def _send_reply(self, link: Link, request: Message, reply: _Reply) -> None:
        node = link.request_node
        reply_links = link.connection.reply_links
        target = reply_links.get(entity_path(request.reply_to or "").lower()) or reply_links.get(node.lower())
        if target is None:
            log.warning("no reply link for %s on this connection; dropping the reply", node)
            return
        code_key, description_key = ("status-code", "status-description") if node.lower() == CBS_NODE \
            else ("statusCode", "statusDescription")
        properties: dict[str, Any] = {code_key: int32(reply.status), description_key: reply.description}
        if reply.condition:
            properties["errorCondition"] = symbol(reply.condition)
        response = Message(id=uuid.uuid4(), correlation_id=request.id, properties=properties, body=reply.body)
        delivery = target.delivery(str(next(_reply_tags)).encode())
        target.stream(response.encode())
        target.advance()
        delivery.settle()

    def _management(self, node: str, operation: str, body: dict[str, Any]) -> _Reply:
        entity = self.broker.for_management(node)
        now = now_ms()
        entity.touch(now)
        op = operation.split(":", 1)[-1]
        session_id = body.get("session-id")
        if op == "schedule-message":
            numbers = []
            for item in _as_list(body.get("messages")):
                message = StoredMessage(split_sections(bytes(item["message"])))
                entity.check_sendable(message)
                numbers.append(entity.enqueue(message, now, dedup=False))
            return _Reply(body={"sequence-numbers": Array(_UNDESCRIBED, Data.LONG, *numbers)})
        if op == "cancel-scheduled-message":
            entity.cancel_scheduled([int(n) for n in _as_list(body.get("sequence-numbers"))])
            return _Reply(body={})
        if isinstance(entity, Topic):
            raise ServiceBusError(ARGUMENT_ERROR, f"{op} is not supported on topic {entity.name}")
        if op == "renew-lock":
            tokens = [_as_uuid(t) for t in _as_list(body.get("lock-tokens"))]
            expirations = entity.renew_locks(tokens, now)
            stamps = [timestamp(e) for e in expirations]
            return _Reply(body={"expirations": Array(_UNDESCRIBED, Data.TIMESTAMP, *stamps)})
        if op == "peek-message":
            encoded = entity.peek(int(body.get("from-sequence-number", 1)), int(body.get("message-count", 1)),
                                  session_id, now)
            if not encoded:
                return _Reply(204, None, "No messages")
            return _Reply(body={"messages": [{"message": raw} for raw in encoded]})
        if op == "receive-by-sequence-number":
            peek_lock = int(body.get("receiver-settle-mode", 1)) == Link.RCV_SECOND
            found = entity.receive_deferred([int(n) for n in _as_list(body.get("sequence-numbers"))], peek_lock, now)
            items = [{"message": raw, **({"lock-token": token} if token else {})} for raw, token in found]
            return _Reply(body={"messages": items})
        if op == "update-disposition":
            outcome = DISPOSITION_STATUS.get(str(body.get("disposition-status")))
            if outcome is None:
                raise ServiceBusError(ARGUMENT_ERROR, f"unknown disposition-status {body.get('disposition-status')}")
            for token in _as_list(body.get("lock-tokens")):
                entity.settle(_as_uuid(token), outcome, body.get("deadletter-reason"),
                              body.get("deadletter-description"))
            return _Reply(body={})
        if op == "renew-session-lock":
            return _Reply(body={"expiration": timestamp(entity.renew_session(str(session_id), now))})
        if op == "get-session-state":
            return _Reply(body={"session-state": entity.session_state.get(str(session_id))})
        if op == "set-session-state":
            state = body.get("session-state")
            entity.session_state[str(session_id)] = None if state is None else bytes(state)
            return _Reply(body={})
        if op == "get-message-sessions":
            sessions = Array(_UNDESCRIBED, Data.STRING, *entity.session_ids())
            return _Reply(body={"skip": int32(0), "sessions-ids": sessions})
        raise ServiceBusError("amqp:not-implemented", f"operation {operation!r} is not supported by the double", 501)

    def _control(self, operation: str, body: dict[str, Any]) -> _Reply:
        """The ``$unimq-control`` node: provisioning and inspection for other processes."""
        options = dict(body.get("options") or {})
        name = body.get("name")
        if operation == "create-queue":
            return _Reply(body=_jsonable(self.broker.create_queue(str(name), **options).stats()))
        if operation == "create-topic":
            return _Reply(body=_jsonable(self.broker.create_topic(str(name), **options).stats()))
        if operation == "create-subscription":
            sub = self.broker.create_subscription(str(body.get("topic")), str(name), **options)
            return _Reply(body=_jsonable(sub.stats()))
        if operation == "delete":
            self.broker.delete(str(name))
            return _Reply(body={})
        if operation == "list":
            return _Reply(body={"entities": [_jsonable(e) for e in self.broker.list()]})
        if operation == "stats":
            return _Reply(body=_jsonable(self.broker.stats(str(name))))
        if operation == "rules":
            rules = self.broker.subscription(str(name)).rules
            return _Reply(body={"rules": [{"name": rule, "sql": found.sql} for rule, found in rules.items()]})
        if operation == "create-rule":
            sql = body.get("sql")
            self.broker.subscription(str(name)).create_rule(str(body.get("rule")), None if sql is None else str(sql))
            return _Reply(body={})
        if operation == "delete-rule":
            self.broker.subscription(str(name)).delete_rule(str(body.get("rule")))
            return _Reply(body={})
        raise ServiceBusError(ARGUMENT_ERROR, f"unknown control operation {operation!r}")




def _read_filter(terminus: Terminus) -> dict[Any, Any]:
    data = terminus.filter
    data.rewind()
    if not data.next():
        return {}
    value = data.get_object()
    return dict(value) if isinstance(value, dict) else {}


def _jsonable(value: Any) -> Any:
    """Stats and lists go out as AMQP maps: keep them to str/int/float/bool/None/list/dict."""
    return json.loads(json.dumps(value, default=str))


class ServiceBusDouble:
    """An in-process Service Bus test double that the real azure-servicebus SDK can talk to.

    ``start()`` runs the reactor in a daemon thread; ``stop()`` shuts it down. Use ``port=0`` for
    an ephemeral port (read it back from ``.port``). All state changes go through the reactor
    thread, so ``configure_entity`` and ``stats`` are safe to call from tests at any time.

    With ``data_dir``, the state survives a restart: it is loaded from there at construction and
    written there on ``stop()`` and periodically (see :mod:`.persistence` for what is kept and
    what a SIGKILL loses). Without it, everything is in memory.

    ``static=True`` gives the official emulator's constraints: no ``$unimq-control`` node and no
    entity created on first use, so every entity comes from ``config`` (either config format).

    ``keys`` are the shared access policies (name -> key) whose SAS tokens CBS accepts; by default
    the official emulator's ``RootManageSharedAccessKey`` / ``SAS_KEY_VALUE``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5673, config: dict[str, Any] | None = None,
                 data_dir: str | None = None, static: bool = False, keys: dict[str, str] | None = None):
        self.host = host
        self.broker = Broker(static=static)
        if config:
            self.broker.load_config(config)
        store = None
        if data_dir is not None:
            store = SnapshotStore(data_dir)
            store.load(self.broker)
        self._listening = threading.Event()
        self._handler = _Handler(self.broker, host, port, self._listening, store, keys)
        self._thread: threading.Thread | None = None
        self._container: Any = None
        self._stopped = threading.Event()
        self._startup_error: BaseException | None = None

    @classmethod
    def from_config_file(cls, path: str, host: str = "127.0.0.1", port: int = 5673,
                         data_dir: str | None = None, static: bool = False) -> ServiceBusDouble:
        with open(path, encoding="utf-8") as handle:
            return cls(host, port, json.load(handle), data_dir, static)

    @property
    def port(self) -> int:
        return self._handler.port

    @property
    def url(self) -> str:
        return f"sb://{self.host}:{self.port}"

    @property
    def connection_string(self) -> str:
        return (f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName=RootManageSharedAccessKey;"
                "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true")

    def run(self) -> None:
        """Serve in the calling thread until ``stop()``."""
        self._container = Container(self._handler)
        try:
            self._container.run()
        except BaseException as exc:
            if not self._listening.is_set():
                self._startup_error = exc
            raise
        finally:
            self._stopped.set()
            self._listening.set()  # unblock start() if we died before listening

    def _run_in_background(self) -> None:
        try:
            self.run()
        except Exception:
            if self._startup_error is None:
                log.exception("the Service Bus double stopped")
            # a startup error is re-raised by start() in the caller's thread

    def start(self, timeout: float = 10.0) -> ServiceBusDouble:
        self._thread = threading.Thread(target=self._run_in_background, name="servicebus-double", daemon=True)
        self._thread.start()
        if not self._listening.wait(timeout):
            raise RuntimeError("the Service Bus double did not start listening")
        if self._startup_error is not None:
            raise RuntimeError(f"the Service Bus double could not listen on {self.host}:{self.port}: "
                               f"{self._startup_error}") from self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._container is None or self._stopped.is_set():
            return
        self._handler.injector.trigger(ApplicationEvent("stop"))
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> ServiceBusDouble:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def call(self, function: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``function`` on the reactor thread (directly if the reactor is not running)."""
        if not self._listening.is_set() or self._stopped.is_set():
            return function()
        future: Future[Any] = Future()
        self._handler.calls.put((function, future))
        self._handler.injector.trigger(ApplicationEvent("call"))
        return future.result(timeout)

    def configure_entity(self, name: str, kind: str | None = None, **options: Any) -> dict[str, Any]:
        """Set entity options (lock_duration, max_delivery_count, requires_session,
        duplicate_detection_window, default_ttl, dead_lettering_on_message_expiration,
        auto_delete_on_idle).

        ``name`` is ``queue``, ``topic`` or ``topic/Subscriptions/sub``. With ``kind``
        (``"queue"``/``"topic"``) the entity is created now; otherwise the options apply when it is
        first used.
        """
        configured: dict[str, Any] = self.call(lambda: self.broker.configure_entity(name, kind, **options))
        return configured

    def stats(self, name: str) -> dict[str, Any]:
        stats: dict[str, Any] = self.call(lambda: self.broker.stats(name))
        return stats

    def list_entities(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.call(self.broker.list)
        return listed

    def delete_entity(self, name: str) -> None:
        self.call(lambda: self.broker.delete(name))
