"""Inspection and hand-off operations shared by the CLI (``unimq peek/stats/ls``) and the MCP server.

Plain functions over a :class:`~unimq.Broker` that return pydantic models, so both front ends
format the same data. Bodies come back as text when they are UTF-8, else as base64 with a flag.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from unimq import durations
from unimq.broker import Broker, Consumer
from unimq.errors import CapabilityError, ConfigError, NotFound, Timeout, UnimqError
from unimq.message import Delivery, Message

log = logging.getLogger("unimq.inspect")

JsonBody = str | dict[str, Any] | list[Any]
SettleAction = Literal["complete", "abandon", "dead_letter"]


class MessageView(BaseModel):
    """A message as shown to people and assistants."""

    message_id: str
    body: str = Field(description="the body as text, or base64 when body_encoding is 'base64'")
    body_encoding: Literal["utf-8", "base64"] = "utf-8"
    body_bytes: int = Field(description="size of the whole body in bytes")
    truncated: bool = Field(False, description="true when only the first bytes of the body are shown")
    key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    correlation_id: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    timestamp: str | None = None
    priority: int | None = None
    attempt: int | None = Field(None, description="delivery attempt, from 1 (received messages only)")
    handle: str | None = Field(None, description="lock handle for settle_message (settle='later' only)")


def message_view(message: Message, *, max_bytes: int | None = None, attempt: int | None = None,
                 handle: str | None = None) -> MessageView:
    """Describe ``message``, showing at most ``max_bytes`` of its body."""
    body = message.body
    shown = body if max_bytes is None else body[:max_bytes]
    try:
        text, encoding = shown.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(shown).decode("ascii"), "base64"
    return MessageView(
        message_id=message.message_id, body=text, body_encoding=encoding,
        body_bytes=len(body), truncated=len(shown) < len(body), key=message.key, headers=dict(message.headers),
        correlation_id=message.correlation_id, reply_to=message.reply_to, content_type=message.content_type,
        timestamp=message.timestamp.isoformat() if message.timestamp else None, priority=message.priority,
        attempt=attempt, handle=handle,
    )


def encode_body(body: JsonBody) -> tuple[bytes, str]:
    """Text is sent as UTF-8 (``text/plain``); an object or array as JSON (``application/json``)."""
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body, separators=(",", ":")).encode(), "application/json"


class SendResult(BaseModel):
    destination: str
    message_id: str
    correlation_id: str | None = None
    body_bytes: int


class DestinationProperties(BaseModel):
    """Depth and capabilities of a destination (``None`` where the backend cannot tell)."""

    destination: str
    group: str | None = None
    backend: str
    depth: int | None = Field(None, description="messages waiting")
    in_flight: int | None = Field(None, description="messages received and not yet settled")
    dead_letter_depth: int | None = None
    dead_letter_destination: str
    lag: int | None = Field(None, description="messages the group has yet to read (log backends)")
    detail: dict[str, Any] = Field(default_factory=dict)
    capabilities: dict[str, str] = Field(default_factory=dict, description="flag → native/emulated/none (limit)")


class SettleResult(BaseModel):
    handle: str
    message_id: str
    action: SettleAction


#: The longest duration the front ends accept (a TTL, delay or wait): a year.
MAX_SECONDS = 366 * 24 * 3600.0


def _seconds(value: float | None, field: str) -> timedelta | None:
    """A TTL or delay in seconds: finite, not negative, at most :data:`MAX_SECONDS` (else ConfigError)."""
    if value is None or value == 0:
        return None
    seconds = durations.seconds(value, field)
    if seconds > MAX_SECONDS:
        raise ConfigError(f"{field} must be at most {MAX_SECONDS:.0f} seconds (a year), got {seconds:g}")
    return timedelta(seconds=seconds)


async def list_destinations(broker: Broker) -> list[str]:
    """Every destination the backend can list (CapabilityError where it cannot list)."""
    return sorted(await broker.destinations())


async def check_destination(broker: Broker, destination: str, create: bool = False) -> None:
    """Raise NotFound unless ``destination`` exists (or create it), so a typo never creates one by accident.

    Dead-letter destinations of listed ones count as existing. Backends that cannot list
    their destinations are not checked: their own errors say what is missing.
    """
    try:
        names = set(await broker.destinations())
    except CapabilityError:
        return
    if destination in names or any(broker.dead_letter_destination(n) == destination for n in names):
        return
    if create:
        await broker.ensure(destination)
        return
    raise NotFound(f"no destination {destination!r} on {broker.url}; see list_destinations / `unimq ls`")


async def send(broker: Broker, destination: str, body: bytes, *, content_type: str | None = None,
               key: str | None = None, headers: dict[str, str] | None = None, correlation_id: str | None = None,
               reply_to: str | None = None, ttl: float | None = None, delay: float | None = None,
               priority: int | None = None, message_id: str | None = None, create: bool = False) -> SendResult:
    """Send one message; options the backend cannot honour raise CapabilityError before sending."""
    await check_destination(broker, destination, create)
    sent = await broker.producer(destination).send(
        body, key=key, headers=headers, correlation_id=correlation_id, reply_to=reply_to,
        content_type=content_type, ttl=_seconds(ttl, "ttl"), delay=_seconds(delay, "delay"), priority=priority,
        message_id=message_id,
    )
    return SendResult(destination=destination, message_id=sent.message_id, correlation_id=sent.correlation_id,
                      body_bytes=len(sent.body))


async def peek(broker: Broker, destination: str, count: int = 10, *, max_bytes: int | None = None) -> list[MessageView]:
    """Up to ``count`` waiting messages, left in place."""
    await check_destination(broker, destination)
    return [message_view(m, max_bytes=max_bytes) for m in await broker.peek(destination, count)]


async def destination_properties(broker: Broker, destination: str, group: str | None = None) -> DestinationProperties:
    await check_destination(broker, destination)
    stats = await broker.stats(destination, group)
    caps = broker.capabilities_for(destination)
    flags = {name: str(getattr(caps, name)) for name in caps.flag_names()}
    flags["max_message_bytes"] = str(caps.max_message_bytes)
    return DestinationProperties(
        destination=destination, group=group, backend=broker.backend, depth=stats.depth, in_flight=stats.in_flight,
        dead_letter_depth=stats.dead_letter_depth, dead_letter_destination=broker.dead_letter_destination(destination),
        lag=stats.lag, detail=stats.detail, capabilities=flags,
    )


class _Held:
    __slots__ = ("consumer", "delivery", "expires_at")

    def __init__(self, consumer: Consumer, delivery: Delivery, expires_at: float) -> None:
        self.consumer = consumer
        self.delivery = delivery
        self.expires_at = expires_at


class Receiver:
    """Receives messages and holds the ones to be settled later, by lock handle.

    Each receive opens its own consumer with ``prefetch=count``, so nothing is read ahead and
    locked unseen. With ``settle="ack"`` the consumer closes at the end of the call; with
    ``settle="later"`` it stays open until its last handle is settled or expires (after
    ``lock_seconds``, when the message is released for redelivery). Handles live in this object,
    so in this process only.
    """

    def __init__(self, broker: Broker, lock_seconds: float = 60.0, max_held: int = 100) -> None:
        self._broker = broker
        self.lock_seconds = lock_seconds
        self.max_held = max_held
        self._held: dict[str, _Held] = {}
        self._consumers: dict[Consumer, int] = {}  # open consumer → handles it still holds

    @property
    def held(self) -> int:
        return len(self._held)

    async def receive(self, destination: str, group: str | None = None, count: int = 1, wait: float = 5.0,
                      settle: Literal["ack", "later"] = "ack", max_bytes: int | None = None) -> list[MessageView]:
        """Up to ``count`` messages, waiting at most ``wait`` seconds for them."""
        await self.expire()
        if settle == "later" and self.held + count > self.max_held:
            raise UnimqError(f"{self.held} messages are already held for settlement (at most {self.max_held}): "
                             "settle some with settle_message first")
        await check_destination(self._broker, destination)
        consumer = self._broker.consumer(destination, group, prefetch=count, lock_timeout=self.lock_seconds)
        await consumer.open()
        try:
            deliveries = await consumer.receive_many(count, wait)
            handles = [uuid.uuid4().hex if settle == "later" else None for _ in deliveries]
            views = await _views_or_release(deliveries, max_bytes, handles)
            for delivery, handle in zip(deliveries, handles, strict=True):
                if handle is None:
                    await delivery.ack()
                else:
                    self._held[handle] = _Held(consumer, delivery, time.monotonic() + self.lock_seconds)
                    self._consumers[consumer] = self._consumers.get(consumer, 0) + 1
        finally:
            if consumer not in self._consumers:
                await consumer.close()
        return views

    async def settle(self, handle: str, action: SettleAction, reason: str = "") -> SettleResult:
        """Complete (ack), abandon (redeliver now) or dead-letter a held message."""
        await self.expire()
        held = self._held.pop(handle, None)
        if held is None:
            raise NotFound(f"unknown or expired lock handle {handle!r}: handles last {self.lock_seconds:g}s "
                           "and only in the server process that received the message")
        try:
            if action == "complete":
                await held.delivery.ack()
            elif action == "abandon":
                await held.delivery.nack()
            else:
                await held.delivery.reject(reason or "dead-lettered by request")
        finally:
            await self._release(held.consumer)
        return SettleResult(handle=handle, message_id=held.delivery.message.message_id, action=action)

    async def expire(self) -> None:
        """Release messages whose handle outlived its lock, for redelivery."""
        now = time.monotonic()
        for handle in [h for h, held in self._held.items() if held.expires_at <= now]:
            held = self._held.pop(handle)
            await _quietly(held.delivery.nack, "release expired handle")
            await self._release(held.consumer)

    async def close(self) -> None:
        """Release every held message and close the consumers."""
        for held in self._held.values():
            await _quietly(held.delivery.nack, "release held message")
        self._held.clear()
        for consumer in list(self._consumers):
            await _quietly(consumer.close, "close consumer")
        self._consumers.clear()

    async def _release(self, consumer: Consumer) -> None:
        left = self._consumers.get(consumer, 0) - 1
        if left > 0:
            self._consumers[consumer] = left
            return
        self._consumers.pop(consumer, None)
        await _quietly(consumer.close, "close consumer")


async def _views_or_release(deliveries: list[Delivery], max_bytes: int | None,
                            handles: list[str | None]) -> list[MessageView]:
    """The view of every delivery, built before any is settled; if one cannot be shown, all are released
    (redelivered later) and the error names it, so nothing is acked unseen."""
    views = []
    for delivery, handle in zip(deliveries, handles, strict=True):
        try:
            views.append(message_view(delivery.message, max_bytes=max_bytes, attempt=delivery.attempt,
                                      handle=handle))
        except Exception as exc:
            for each in deliveries:
                await _quietly(each.nack, "release a message after a view failed")
            raise UnimqError(f"message {delivery.message.message_id!r} cannot be shown "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                             f"the {len(deliveries)} message(s) received were released, not settled") from exc
    return views


async def _quietly(action: Callable[[], Awaitable[None]], what: str) -> None:
    """Best-effort cleanup: a message not settled is redelivered after its lock anyway."""
    try:
        await action()
    except Exception as exc:
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)


async def request_reply(broker: Broker, destination: str, body: bytes, *, reply_to: str | None = None, wait: float,
                        reply_group: str | None = None, content_type: str | None = None,
                        correlation_id: str | None = None, key: str | None = None,
                        headers: dict[str, str] | None = None, ttl: float | None = None,
                        max_held: int = 100, max_bytes: int | None = None,
                        create: bool = False) -> tuple[SendResult, MessageView]:
    """Send a request and wait up to ``wait`` seconds for its reply.

    Without ``reply_to`` the reply comes back on the broker's private reply path
    (``Broker.request``): nothing else is read, nothing is held back or released. With ``reply_to``
    (a shared destination a responder replies to), the reply is the first message on ``reply_to``
    whose correlation_id is the request's correlation_id (or its message_id). It is acked once its
    view is built (a reply that cannot be shown is released, not lost); other messages read
    meanwhile are held, then released for redelivery, so other requesters still get theirs. The
    reply consumer opens before the request is sent, so a fast reply is not missed.
    """
    if reply_to is None:
        await check_destination(broker, destination, create)
        reply = await broker.request(destination, body, timeout=wait, content_type=content_type, key=key,
                                     headers=headers, ttl=_seconds(ttl, "ttl"))
        sent = SendResult(destination=destination, message_id=reply.correlation_id or "",
                          correlation_id=reply.correlation_id, body_bytes=len(body))
        return sent, message_view(reply, max_bytes=max_bytes)
    await check_destination(broker, reply_to, create)
    correlation_id = correlation_id or uuid.uuid4().hex
    message_id = uuid.uuid4().hex
    wanted = {correlation_id, message_id}
    consumer = broker.consumer(reply_to, reply_group, prefetch=max_held, lock_timeout=wait + 30.0)
    others: list[Delivery] = []
    try:
        await consumer.open()
        sent = await send(broker, destination, body, content_type=content_type, key=key, headers=headers,
                          correlation_id=correlation_id, reply_to=reply_to, ttl=ttl, message_id=message_id,
                          create=create)
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            delivery = await consumer.receive(remaining)
            if delivery is None:
                break
            if delivery.message.correlation_id in wanted:
                [view] = await _views_or_release([delivery], max_bytes, [None])
                await delivery.ack()
                return sent, view
            others.append(delivery)
        raise Timeout(f"no reply with correlation_id {correlation_id!r} on {reply_to!r} within {wait:g}s "
                      f"(request {sent.message_id} was sent to {destination!r}; "
                      f"{len(others)} other messages were seen and left in place)")
    finally:
        for delivery in others:
            await _quietly(delivery.nack, "release a message that was not the reply")
        await _quietly(consumer.close, "close reply consumer")
