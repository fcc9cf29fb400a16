"""``nats://`` and ``tls://``: NATS JetStream (default) or core NATS (``?jetstream=false``) via nats-py.

A destination is a subject. By default each destination has its own stream (``UNIMQ_<subject>``,
subjects ``[<subject>]``, limits retention), created by ``ensure()`` or on first use; ``?stream=NAME``
uses one existing stream instead. A group is a durable pull consumer filtered on the subject;
group None is the durable ``default``. See docs/backends/nats.md for the whole mapping.

``?routing=subjects`` (native routing): the stream captures ``[<subject>, <subject>.>]``, a send
with ``subject=s`` is published to ``<subject>.s`` (the ``x-unimq-subject`` header travels too), a
group's durable filters on its pattern (``routing_filters``; the consumer that opens last sets it,
no pattern = the whole stream) and dead letters go to ``<subject>-dlq``, outside that wildcard.
Streams made without it are refused with it and the other way round: the two modes cannot share a
destination (its groups would miss what the other mode publishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from pydantic import BaseModel

from unimq.capabilities import Capabilities
from unimq.driver import DestinationSpec, Driver, ReceiveSettings, Start, Stats, Subscription
from unimq.errors import (
    AuthenticationError,
    BrokerConnectionError,
    CapabilityError,
    ConfigError,
    ErrorRule,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    Timeout,
    UnimqError,
)
from unimq.message import Message
from unimq.patterns import SUBJECT
from unimq.reliability import EXPIRES_AT, NOT_BEFORE, seconds_until
from unimq.url import BrokerURL
from unimq_nats.core import CoreSubscription
from unimq_nats.jetstream import JetStreamSubscription
from unimq_nats.mapping import (
    DEFAULT_DURABLE,
    HEADER_RESERVE,
    INBOX_PREFIX,
    check_subject,
    core_capabilities,
    describe,
    described,
    durable_name,
    jetstream_capabilities,
    routed_subject,
    stream_name,
    to_headers,
    to_message,
    with_subject,
)
from unimq_nats.options import NatsOptions
from unimq_nats.transport import connect as large_reads_connect

log = logging.getLogger("unimq.nats")


#: A flush timeout nats-py never reaches (see NatsDriver.flush).
_NEVER = 10**6
#: The subject of a "Permissions Violation for Publish to "<subject>"" the server reports asynchronously.
_DENIED_PUBLISH = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


def _refused(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


def _denied(exc: BaseException) -> bool:
    return "permissions violation" in str(exc).lower()


#: nats-py exception -> unimq class (unimq.errors.GENERIC_ERRORS follow). nats-py reports a refused
#: credential as AuthorizationError or as a plain error saying "Authorization Violation", and a
#: publish or subscribe the account may not make as one saying "Permissions Violation".
ERRORS: tuple[ErrorRule, ...] = (
    (nats.errors.MaxPayloadError, MessageTooLarge),
    (nats.errors.AuthorizationError, AuthenticationError),
    (nats.errors.InvalidUserCredentialsError, AuthenticationError),
    (nats.errors.Error, AuthenticationError, _refused),
    (nats.errors.Error, PermissionDenied, _denied),
    (nats.errors.NoServersError, BrokerConnectionError),
    (nats.errors.ConnectionClosedError, BrokerConnectionError),
    (nats.errors.ConnectionReconnectingError, BrokerConnectionError),
    (nats.errors.StaleConnectionError, BrokerConnectionError),
    (nats.errors.OutboundBufferLimitError, BrokerConnectionError),
    (nats.errors.ConnectionDrainingError, BrokerConnectionError),
    (nats.js.errors.ServiceUnavailableError, BrokerConnectionError),
    (nats.js.errors.NoStreamResponseError, NotFound),
    (nats.errors.NoRespondersError, NotFound),
    (nats.js.errors.NotFoundError, NotFound),
    (nats.js.errors.BadRequestError, ConfigError),
    (nats.errors.TimeoutError, Timeout),
    (nats.js.errors.TooManyStalledMsgsError, Timeout),
)


class Deferrals:
    """How many times this process deferred a message (emulated delay), so ``attempt`` excludes them.

    Bounded: the oldest entries are forgotten first. A deferral made by another process is not
    known here, so such a message may arrive with ``attempt`` one higher.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._counts: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._max = max_entries

    def defer(self, stream: str, durable: str, seq: int) -> None:
        key = (stream, durable, seq)
        self._counts[key] = self._counts.get(key, 0) + 1
        if len(self._counts) > self._max:
            self._counts.popitem(last=False)

    def count(self, stream: str, durable: str, seq: int) -> int:
        return self._counts.get((stream, durable, seq), 0) if self._counts else 0

    def forget(self, stream: str, durable: str, seq: int) -> None:
        if self._counts:
            self._counts.pop((stream, durable, seq), None)


class NatsDriver(Driver):
    name = "nats"
    Options: ClassVar[type[BaseModel]] = NatsOptions
    errors: ClassVar[Sequence[ErrorRule]] = ERRORS
    options: NatsOptions

    def __init__(self, url: BrokerURL, options: NatsOptions) -> None:
        super().__init__(url, options)
        #: ?routing=subjects: routing subjects are NATS subjects under the destination.
        self.routing = options.routing == "subjects"
        limit = options.max_payload - HEADER_RESERVE
        self._caps = (jetstream_capabilities(limit, options.max_batch, self.routing) if options.jetstream
                      else core_capabilities(limit, options.max_batch))
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._streams: dict[str, str] = {}
        self._dedup: set[str] = set()
        self._ack_prefix: str | None = None
        self._ack_seq = 0
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._stream_locks: dict[str, asyncio.Lock] = {}
        #: Publish permission violations the server reported since the last publish to that subject.
        self._denied: dict[str, BaseException] = {}
        self.deferrals = Deferrals()

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def native(self) -> Client | None:
        """The nats-py ``nats.aio.client.Client``; ``broker.native.jetstream()`` gives JetStream."""
        return self._nc

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BrokerConnectionError("nats: not connected")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise CapabilityError("nats: JetStream is off (?jetstream=false)")
        return self._js

    @property
    def js_prefix(self) -> str:
        return self.js._prefix

    # Connection

    async def open(self) -> None:
        opts = self.options
        url = self.url
        scheme = "tls" if url.scheme == "tls" else "nats"
        servers = [f"{scheme}://{host}:{port or 4222}" for host, port in url.hosts] or [f"{scheme}://127.0.0.1:4222"]
        kwargs: dict[str, Any] = {
            "servers": servers, "name": opts.name, "connect_timeout": opts.connect_timeout,
            "max_reconnect_attempts": opts.connect_attempts - 1 or 1, "allow_reconnect": opts.connect_attempts > 1,
            "reconnect_time_wait": 0.5, "error_cb": self._on_error,
            "disconnected_cb": _log_disconnect, "reconnected_cb": _log_reconnect,
        }
        if url.username is not None:
            kwargs["user"] = url.username
            kwargs["password"] = url.password or ""
        if opts.token:
            kwargs["token"] = opts.token
        if opts.nkey_seed:
            kwargs["nkeys_seed_str"] = opts.nkey_seed
        if opts.creds:
            kwargs["user_credentials"] = opts.creds
        if url.scheme == "tls" or opts.ca or opts.cert:
            kwargs["tls"] = self._tls_context()
            if opts.tls_hostname:
                kwargs["tls_hostname"] = opts.tls_hostname
        self._nc = await large_reads_connect(**kwargs)
        # nats-py uses one setting for the first connection and for reconnection: bound the first, then
        # let a lost connection be retried as configured.
        self._nc.options["max_reconnect_attempts"] = opts.max_reconnect_attempts
        self._nc.options["allow_reconnect"] = True
        self._nc.options["reconnect_time_wait"] = 2
        if opts.jetstream:
            self._js = self._nc.jetstream(timeout=opts.api_timeout)
            try:
                await self._js.account_info()
            except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
                    nats.errors.TimeoutError) as exc:
                await self._nc.close()
                raise ConfigError(
                    f"nats: JetStream is not enabled for this account on {url.redacted()} ({type(exc).__name__}); "
                    "enable it on the server (-js) or connect with ?jetstream=false"
                ) from exc

    def _tls_context(self) -> ssl.SSLContext:
        opts = self.options
        try:
            context = ssl.create_default_context(cafile=opts.ca)
            if opts.cert:
                context.load_cert_chain(opts.cert, opts.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"nats: TLS options ca/cert/key: {exc}") from exc
        return context

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.drain()
            if not self._nc.is_closed:
                await self._nc.close()

    async def reply_inbox(self, deliver: Callable[[Message], None]) -> str:
        """A core-NATS inbox, NATS's own request-reply: replies are not stored, and a reply to a
        requester that is gone is dropped by the server."""
        inbox = self.nc.new_inbox()

        async def arrived(msg: Msg) -> None:
            deliver(to_message(msg.data, msg.headers, inbox, None))

        await self.nc.subscribe(inbox, cb=arrived)
        return inbox

    # Publishing

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        check_subject(destination)
        reply = destination.startswith(INBOX_PREFIX)
        if self._js is None or reply:
            return await self._publish_core(destination, messages, confirm=not reply)
        await self.stream_ready(destination)
        subjects = self._routes(destination, messages) if self.routing else None
        results = await self._publish_js(destination, messages, subjects)
        if any(isinstance(r, nats.js.errors.NoStreamResponseError) for r in results):
            # The stream was deleted behind our back: create it again and resend those messages once.
            self._streams.pop(destination, None)
            await self.stream_ready(destination)
            again = [i for i, r in enumerate(results) if isinstance(r, nats.js.errors.NoStreamResponseError)]
            retried = await self._publish_js(destination, [messages[i] for i in again],
                                             None if subjects is None else [subjects[i] for i in again])
            results = list(results)
            for i, result in zip(again, retried, strict=True):
                results[i] = result
        return [None if r is None else self.map_error(r, f"publish to {destination}") for r in results]

    @staticmethod
    def _routes(destination: str, messages: Sequence[Message]) -> list[str]:
        """``?routing=subjects``: the NATS subject of each message, ``<destination>.<its subject>``."""
        return [routed_subject(destination, m.headers[SUBJECT]) if SUBJECT in m.headers else destination
                for m in messages]

    async def _publish_js(self, destination: str, messages: Sequence[Message],
                          subjects: Sequence[str] | None) -> list[BaseException | None]:
        """Pipelined: every publish written at once (reply to our ack inbox), then all acks awaited.
        ``subjects`` (``?routing=subjects``) gives each message its own subject.

        In flight is bounded by the batch. Acks are matched by reply token and only parsed when they
        carry an error: nats-py's publish_async parses each into a PubAck, a third of the client's
        time per message.
        """
        nc = self.nc
        if self._ack_prefix is None:
            self._ack_prefix = nc.new_inbox() + "."
            await nc.subscribe(self._ack_prefix + "*", cb=self._on_ack)
        prefix = self._ack_prefix
        loop = asyncio.get_running_loop()
        dedup = destination in self._dedup
        limit = nc.max_payload
        acks = self._acks
        futures: list[asyncio.Future[None]] = []
        results: list[BaseException | None] = [None] * len(messages)
        for i, m in enumerate(messages):
            headers = to_headers(m, dedup)
            if len(m.body) + HEADER_RESERVE > limit and len(m.body) + _header_bytes(headers) > limit:
                results[i] = MessageTooLarge(f"nats: message {m.message_id} with its headers exceeds the "
                                             f"server's max_payload of {limit} bytes")
                futures.append(_done(loop))
                continue
            self._ack_seq += 1
            token = str(self._ack_seq)
            future: asyncio.Future[None] = loop.create_future()
            acks[token] = future
            futures.append(future)
            await nc.publish(destination if subjects is None else subjects[i], m.body, reply=prefix + token,
                             headers=headers)
        timeout = self.options.api_timeout
        _, pending = await asyncio.wait(futures, timeout=timeout)
        for future in pending:
            future.cancel()
        if pending:
            for token in [t for t, f in acks.items() if f.cancelled()]:
                del acks[token]
        denied = self._denied.pop(destination, None)
        for subject in set(subjects or ()):
            denied = self._denied.pop(subject, None) or denied
        for i, future in enumerate(futures):
            if future.cancelled():
                results[i] = denied or Timeout(f"nats: no publish ack from JetStream within {timeout:g}s")
            elif results[i] is None:
                results[i] = future.exception()
        return results

    async def _on_ack(self, msg: Msg) -> None:
        assert self._ack_prefix is not None
        future = self._acks.pop(msg.subject[len(self._ack_prefix):], None)
        if future is None or future.done():
            return
        data = msg.data
        if not data and msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
        elif b'"error"' in data and (error := _ack_error(data)) is not None:
            future.set_exception(error)
        else:
            future.set_result(None)

    async def _publish_core(self, destination: str, messages: Sequence[Message],
                            confirm: bool = True) -> list[BaseException | None]:
        """Core NATS publishes. ``confirm`` flushes to learn of a refusal (the server's -ERR comes
        before its PONG); a reply to a requester's inbox is not confirmed, as nats-py's
        ``msg.respond`` does not (a flush per reply is a round trip per request; the requester's
        timeout covers a reply that never arrives)."""
        nc = self.nc
        for m in messages:
            await nc.publish(destination, m.body, headers=to_headers(m, False))
        if not confirm:
            return [None] * len(messages)
        await self.flush()
        denied = self._denied.pop(destination, None)
        return [denied] * len(messages)

    async def flush(self) -> None:
        """``nc.flush()`` that is never cut short: nats-py leaves the PING future of a cancelled or
        timed-out flush in its queue, and the next PONG then kills its read loop (InvalidStateError)."""
        flushing = asyncio.ensure_future(self.nc.flush(timeout=_NEVER))
        async with asyncio.timeout(self.options.api_timeout):
            await asyncio.shield(flushing)

    async def _on_error(self, exc: Exception) -> None:
        """nats-py reports a refused publish only here: keep it for the publish that waits on it."""
        found = _DENIED_PUBLISH.search(str(exc))
        if found:
            self._denied[found.group(1)] = exc
        log.debug("nats client error: %s: %s", type(exc).__name__, exc)

    # Streams and durables

    async def stream_ready(self, destination: str) -> str:
        """The stream holding ``destination``, created (per-destination mode) if missing."""
        name = self._streams.get(destination)
        if name is not None:
            return name
        lock = self._stream_locks.setdefault(destination, asyncio.Lock())
        async with lock:
            name = self._streams.get(destination)
            if name is None:
                name = await self._find_or_create_stream(destination, None)
        return name

    async def _find_or_create_stream(self, destination: str, spec: DestinationSpec | None) -> str:
        """Find, create or (with a spec) update the stream; remember its name and whether it de-duplicates."""
        config = await self._stream_config(destination, spec)
        name = config.name or stream_name(destination)
        self._streams[destination] = name
        if described(config.description).get("dedup"):
            self._dedup.add(destination)
        else:
            self._dedup.discard(destination)
        return name

    async def _stream_config(self, destination: str, spec: DestinationSpec | None) -> api.StreamConfig:
        check_subject(destination)
        js = self.js
        if self.options.stream:
            info = await js.stream_info(self.options.stream)
            return await self._update_stream(info, spec)
        name = stream_name(destination)
        routed = f"{destination}.>"
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            config = api.StreamConfig(
                name=name, subjects=[destination, routed] if self.routing else [destination],
                retention=api.RetentionPolicy.LIMITS, storage=api.StorageType(self.options.storage),
                num_replicas=self.options.replicas, description=describe({}),
            )
            if spec is not None:
                config = _apply_spec(config, spec)
            try:
                await js.add_stream(config)
                return config
            except nats.js.errors.BadRequestError as exc:
                try:
                    info = await js.stream_info(name)  # created concurrently by someone else
                except nats.js.errors.NotFoundError:
                    raise self._not_created(name, config.subjects or [], exc) from exc
        subjects = info.config.subjects or []
        if destination not in subjects:
            raise ConfigError(
                f"nats: stream {name!r} already exists for subjects {subjects}, not {destination!r}; "
                "pass ?stream=NAME to use a stream of your own"
            )
        if self.routing and routed not in subjects:
            raise ConfigError(
                f"nats: stream {name!r} was made without ?routing=subjects (subjects {subjects}): add {routed!r} "
                "to its subjects (nats stream edit) or delete it, or connect without ?routing=subjects"
            )
        if not self.routing and routed in subjects:
            raise ConfigError(f"nats: stream {name!r} captures {routed!r} (made with ?routing=subjects): "
                              "connect with ?routing=subjects to use it")
        return await self._update_stream(info, spec)

    def _not_created(self, name: str, subjects: list[str], exc: nats.js.errors.BadRequestError) -> UnimqError:
        """The server refused a new stream: with ?routing=subjects, mostly another stream under ``<subject>.>``."""
        if not self.routing:
            return self.map_error(exc, f"create stream {name}")
        return ConfigError(
            f"nats: cannot create stream {name!r} for subjects {subjects} (?routing=subjects): {exc.description}; "
            f"a stream of another destination under {subjects[1]!r} (or the .dlq of one used without routing) "
            "is in the way: delete it or name this destination differently"
        )

    async def _update_stream(self, info: api.StreamInfo, spec: DestinationSpec | None) -> api.StreamConfig:
        if spec is None:
            return info.config
        config = _apply_spec(info.config, spec)
        if config != info.config:
            await self.js.update_stream(config)
        return config

    async def durable(
        self, stream: str, destination: str, durable: str, lock_timeout: float | None, start: Start,
        max_deliveries: int | None = None, filters: list[str] | None = None,
    ) -> api.ConsumerInfo:
        """Find or create the durable of a group; a different lock_timeout updates its ack_wait.

        With ?routing=subjects, ``filters`` (``routing_filters``; None = leave them, [] = the whole
        stream) are its filter subjects: an existing durable that filters otherwise is updated.
        """
        js = self.js
        info: api.ConsumerInfo
        try:
            info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            settings = described((await js.stream_info(stream)).config.description)
            ack_wait = lock_timeout or settings.get("lock_timeout") or self.options.lock_timeout
            limit = max_deliveries or settings.get("max_deliveries")
            config = api.ConsumerConfig(
                durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=float(ack_wait),
                description=describe({"max_deliveries": limit} if limit else {}),
                **(_filters(filters or []) if self.routing else {"filter_subject": destination}),
                **_deliver_policy(start),
            )
            try:
                return await js.add_consumer(stream, config)
            except nats.js.errors.BadRequestError:
                info = await js.consumer_info(stream, durable)  # created concurrently
        config = info.config
        changes: dict[str, Any] = {}
        if self.routing:
            current = config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])
            if filters is not None and sorted(current) != sorted(filters):
                changes.update({"filter_subject": None, "filter_subjects": None, **_filters(filters)})
        elif config.filter_subject not in (destination, None, "", ">"):
            raise ConfigError(
                f"nats: durable {durable!r} of stream {stream!r} filters {config.filter_subject!r}, "
                f"not {destination!r}; use another group name"
            )
        if lock_timeout and abs((config.ack_wait or 0) - lock_timeout) > 1e-3:
            changes["ack_wait"] = float(lock_timeout)
        if max_deliveries and described(config.description).get("max_deliveries") != max_deliveries:
            changes["description"] = describe({**described(config.description), "max_deliveries": max_deliveries})
        if changes:
            info = await js.add_consumer(stream, config.evolve(**changes))
        return info

    # The rest of the driver interface

    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        check_subject(destination)
        if self._js is None:
            return CoreSubscription(self, destination, group, settings)
        return JetStreamSubscription(self, destination, group, settings)

    def dead_letter_destination(self, destination: str) -> str:
        """``<destination>.dlq``; with ?routing=subjects ``<destination>-dlq``, outside ``<destination>.>``."""
        return f"{destination}-dlq" if self.routing else f"{destination}.dlq"

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:
        check_subject(destination)
        if self._js is None:
            return  # nothing to provision: every option that would need it is declared none
        async with self._stream_locks.setdefault(destination, asyncio.Lock()):
            stream = await self._find_or_create_stream(destination, spec)
        lock = spec.lock_timeout.total_seconds() if spec.lock_timeout else None
        for group in spec.groups or (None,):
            await self.durable(stream, destination, durable_name(group), lock, None, spec.max_deliveries)
        if spec.dead_letter:
            await self.stream_ready(self.dead_letter_destination(destination))

    async def peek(self, destination: str, count: int) -> list[Message]:
        js = self.js
        stream = self._streams.get(destination) or self.options.stream or stream_name(destination)
        info = await js.stream_info(stream)
        seq = info.state.first_seq
        with contextlib.suppress(nats.js.errors.NotFoundError):
            floor = (await js.consumer_info(stream, DEFAULT_DURABLE)).ack_floor
            seq = max(seq, (floor.stream_seq if floor else 0) + 1)
        out: list[Message] = []
        subject = ">" if self.routing else destination  # the stream holds only the destination's subjects
        while len(out) < count and seq <= info.state.last_seq:
            try:
                raw = await js.get_msg(stream, seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            seq = (raw.seq or seq) + 1
            headers = with_subject(destination, raw.subject or "", raw.headers) if self.routing else raw.headers
            if seconds_until(headers, EXPIRES_AT) <= 0 or 0 < seconds_until(headers, NOT_BEFORE) < float("inf"):
                continue
            out.append(to_message(raw.data or b"", headers, f"{stream}-{raw.seq}", raw.time))
        return out

    async def stats(self, destination: str, group: str | None) -> Stats:
        if self._js is None:
            return Stats(destination=destination, group=group, detail={"mode": "core"})
        js = self.js
        stream = self._streams.get(destination) or self.options.stream or stream_name(destination)
        state = (await js.stream_info(stream)).state
        detail: dict[str, Any] = {"stream": stream, "stream_messages": state.messages}
        depth: int | None = state.messages
        in_flight = None
        with contextlib.suppress(nats.js.errors.NotFoundError):
            info = await js.consumer_info(stream, durable_name(group))
            depth, in_flight = info.num_pending, info.num_ack_pending
            detail.update(durable=info.name, num_redelivered=info.num_redelivered, num_waiting=info.num_waiting)
        dead = None
        dlq = self.dead_letter_destination(destination)
        dlq_stream = self._streams.get(dlq) or (None if self.options.stream else stream_name(dlq))
        if dlq_stream:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                dead = (await js.stream_info(dlq_stream)).state.messages
                dlq_durable = await js.consumer_info(dlq_stream, DEFAULT_DURABLE)
                dead = (dlq_durable.num_pending or 0) + (dlq_durable.num_ack_pending or 0)
        return Stats(destination=destination, group=group, depth=depth, in_flight=in_flight,
                     dead_letter_depth=dead, lag=depth, detail=detail)

    async def destinations(self) -> list[str]:
        js = self.js
        if self.options.stream:
            info = await js.stream_info(self.options.stream, subjects_filter=">")
            return sorted(info.state.subjects or {})
        names: set[str] = set()
        offset = 0
        while True:
            page = await js.streams_info(offset)
            for info in page:
                names.update(s for s in info.config.subjects or [] if "*" not in s and ">" not in s)
            offset += len(page)
            if len(page) < 256:
                return sorted(names)

    async def delete(self, destination: str) -> None:
        if self._js is None:
            return
        js = self.js
        for name in (destination, self.dead_letter_destination(destination)):
            self._streams.pop(name, None)
            if self.options.stream:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    for info in await js.consumers_info(self.options.stream):
                        if info.config.filter_subject == name:
                            await js.delete_consumer(self.options.stream, info.name)
                    await js.purge_stream(self.options.stream, subject=name)
            else:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream_name(name))


def _header_bytes(headers: dict[str, str]) -> int:
    """Encoded size of a NATS header block (``NATS/1.0``, ``key: value`` lines, CRLFs)."""
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def _ack_error(data: bytes) -> BaseException | None:
    """The error of a publish ack that mentions one, or None (e.g. a stream named "error")."""
    try:
        response = json.loads(data)
    except ValueError as exc:
        return exc
    if not isinstance(response, dict) or "error" not in response:
        return None
    try:
        nats.js.errors.APIError.from_error(response["error"])
    except nats.js.errors.Error as exc:
        return exc
    return None


def _done(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    future: asyncio.Future[None] = loop.create_future()
    future.set_result(None)
    return future


def _apply_spec(config: api.StreamConfig, spec: DestinationSpec) -> api.StreamConfig:
    changes: dict[str, Any] = {}
    settings = described(config.description)
    if spec.deduplication:
        changes["duplicate_window"] = spec.deduplication.total_seconds()
        settings["dedup"] = True
    if spec.retention:
        changes["max_age"] = spec.retention.total_seconds()
    if spec.replication:
        changes["num_replicas"] = spec.replication
    if spec.max_deliveries:
        settings["max_deliveries"] = spec.max_deliveries
    if spec.lock_timeout:
        settings["lock_timeout"] = spec.lock_timeout.total_seconds()
    if settings != described(config.description):
        changes["description"] = describe(settings)
    return config.evolve(**changes) if changes else config


def _filters(filters: list[str]) -> dict[str, Any]:
    """ConsumerConfig fields for filter subjects: none (the whole stream), one, or several (server 2.10)."""
    if len(filters) > 1:
        return {"filter_subjects": filters}
    return {"filter_subject": filters[0]} if filters else {}


def _deliver_policy(start: Start) -> dict[str, Any]:
    """A new durable starts at: everything (default and 'earliest'), new messages, a time or a sequence."""
    if start == "latest":
        return {"deliver_policy": api.DeliverPolicy.NEW}
    if isinstance(start, datetime):
        return {
            "deliver_policy": api.DeliverPolicy.BY_START_TIME, "opt_start_time": start.astimezone(UTC).isoformat(),
        }
    if isinstance(start, int) and not isinstance(start, bool):
        return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": start}
    return {"deliver_policy": api.DeliverPolicy.ALL}


async def _log_disconnect() -> None:
    log.info("nats: disconnected, reconnecting")


async def _log_reconnect() -> None:
    log.info("nats: reconnected")

