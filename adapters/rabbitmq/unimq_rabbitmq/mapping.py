"""Message ↔ AMQP 0-9-1: properties, headers, routing key, delivery attempt.

The body travels untouched. ``message_id``, ``correlation_id``, ``reply_to``, ``content_type``,
``timestamp`` (whole seconds), ``priority`` and ``ttl`` (``expiration``) are AMQP properties;
``headers`` are the AMQP headers table. The routing key is ``key``, or the subject of a message
sent with one (``x-unimq-subject``, which stays a header; the key then goes in ``x-unimq-key``).
The other ``x-unimq-*`` headers below exist only on copies that the emulations republish; all of
them are removed again on receipt.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime
from typing import Any, cast

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from unimq.message import Message, new_message_id
from unimq.reliability import ATTEMPT, DEAD_LETTER_REASON, EXPIRES_AT, NOT_BEFORE

#: The key of a message whose routing key is something else: its subject, or the queue of a copy
#: republished through the default exchange (delay, classic nack).
KEY = "x-unimq-key"
DELIVERY_COUNT = "x-delivery-count"
_DEATH = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
          "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason")
_TRANSPORT = (KEY, ATTEMPT, EXPIRES_AT, NOT_BEFORE, DELIVERY_COUNT)
_DELAY_QUEUE = re.compile(r"\.delay\.\d+$")


def delay_bucket(seconds: float) -> int:
    """Milliseconds, rounded up to two significant digits, so that jittered backoffs share queues."""
    ms = max(1, math.ceil(seconds * 1000))
    if ms >= 100:
        step = 10 ** (len(str(ms)) - 2)
        ms = -(-ms // step) * step
    return ms


def delay_queue(queue: str, ms: int) -> str:
    return f"{queue}.delay.{ms}"


def delayed_sends(destination: str) -> str:
    """The binding pattern that matches every routing key a delayed send returns to ``destination``
    with: the name of the delay queue it waited in (dead-lettering keeps the routing key)."""
    return f"{destination}.delay.*"


def properties(message: Message, persistent: bool, extra: dict[str, str] | None = None) -> Basic.Properties:
    """AMQP properties of ``message``; ``extra`` adds transport headers for emulated copies."""
    headers: dict[str, Any] = dict(message.headers)
    if extra:
        headers.update(extra)
    expiration = None
    if message.ttl is not None:
        ttl_ms = max(0, math.ceil(message.ttl.total_seconds() * 1000))
        if message.delay is not None and message.delay.total_seconds() > 0:
            headers[EXPIRES_AT] = str(int(time.time() * 1000) + ttl_ms)
        else:
            expiration = str(ttl_ms)
    return Basic.Properties(
        content_type=message.content_type,
        headers=headers or None,
        delivery_mode=2 if persistent else 1,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=expiration,
        message_id=message.message_id,
        timestamp=message.timestamp or datetime.now(UTC),
    )


def header_text(value: Any) -> str:
    """An AMQP table value as the string unimq headers are."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def _from_delay_queue(raw: dict[str, Any]) -> bool:
    queue = raw.get("x-first-death-queue")
    return isinstance(queue, str | bytes) and bool(_DELAY_QUEUE.search(header_text(queue)))


def received(raw: DeliveredMessage) -> tuple[Message, int, float]:
    """The unimq view of a received AMQP message (transport headers removed), its delivery attempt
    and when its emulated ttl runs out, read straight from aiormq's frames (no aio-pika message)."""
    props = raw.header.properties
    deliver = cast(Basic.Deliver, raw.delivery)
    raw_headers = props.headers or {}
    if raw_headers:
        strip = _TRANSPORT + _DEATH if _from_delay_queue(raw_headers) else _TRANSPORT
        headers = {k: header_text(v) for k, v in raw_headers.items() if k not in strip}
        if DEAD_LETTER_REASON not in headers and "x-first-death-reason" in raw_headers and "x-death" not in strip:
            queue = header_text(raw_headers.get("x-first-death-queue", "?"))
            headers[DEAD_LETTER_REASON] = f"dead-lettered by RabbitMQ from queue {queue}: " + header_text(
                raw_headers["x-first-death-reason"])
    else:
        headers = {}
    # A copy that went through the default exchange carries its key in a header; otherwise the
    # routing key is the key, unless the message came straight through the default exchange.
    key = deliver.routing_key if deliver.exchange else None
    if KEY in raw_headers:
        key = header_text(raw_headers[KEY])
    timestamp = props.timestamp
    if timestamp is not None and timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    message = Message(
        body=raw.body,
        key=key or None,
        headers=headers,
        message_id=props.message_id or new_message_id(),
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        content_type=props.content_type,
        timestamp=timestamp,
        priority=props.priority or None,
    )
    return message, _attempt(raw_headers, bool(deliver.redelivered)), _expires_at(raw_headers)


def delivered(incoming: AbstractIncomingMessage) -> DeliveredMessage:
    """The aiormq frames an aio-pika message was made of, rebuilt: the few deliveries that reach
    aio-pika's consumer callback (on a recovered channel, before the subscription taps it) take
    the same mapping as the rest."""
    properties = Basic.Properties(
        headers=incoming.headers or None, content_type=incoming.content_type, message_id=incoming.message_id,
        correlation_id=incoming.correlation_id, reply_to=incoming.reply_to, timestamp=incoming.timestamp,
        priority=incoming.priority,
    )
    deliver = Basic.Deliver(consumer_tag=incoming.consumer_tag or "", delivery_tag=incoming.delivery_tag or 0,
                            redelivered=bool(incoming.redelivered), exchange=incoming.exchange or "",
                            routing_key=incoming.routing_key or "")
    return DeliveredMessage(delivery=deliver, header=ContentHeader(body_size=len(incoming.body),
                                                                   properties=properties),
                            body=incoming.body, channel=incoming.channel)


def _attempt(raw: dict[str, Any], redelivered: bool) -> int:
    """Delivery attempt: unimq's republish count plus the broker's own redelivery count.

    Quorum queues count returns exactly (``x-delivery-count``); classic queues only say whether
    the message was delivered before (``redelivered``), so a classic redelivery after a lost
    connection counts as one more attempt however many times it happened.
    """
    try:
        base = int(header_text(raw.get(ATTEMPT, 1)))
    except ValueError:
        base = 1
    count = raw.get(DELIVERY_COUNT)
    if isinstance(count, int):
        return base + count
    return base + (1 if redelivered else 0)


def _expires_at(raw: dict[str, Any]) -> float:
    """When a delayed message's emulated ttl runs out (epoch seconds, 0 = never): the core drops it then."""
    due = raw.get(EXPIRES_AT)
    if due is None:
        return 0.0
    try:
        return int(header_text(due)) / 1000
    except ValueError:
        return 0.0
