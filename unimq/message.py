"""The message and the delivery: the two objects on the per-message hot path.

Both are plain slotted classes rather than pydantic models, because they are created once per
message; validation happens once, at the producer, against the backend's capabilities.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from unimq import durations
from unimq.errors import ConfigError

#: A private generator, seeded from the OS and reseeded in forked children, so that an
#: application calling ``random.seed()`` cannot make two processes mint the same ids.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)
_bits = _ids.getrandbits


def new_message_id() -> str:
    """128 random bits as 32 hex digits (same shape as ``uuid4().hex``; no system call per id)."""
    return _bits(128).to_bytes(16).hex()


@dataclass(slots=True)
class Message:
    """An application message. ``body`` is the application's bytes, untouched on the wire.

    ``message_id`` is generated when absent and stays the same across retries, redeliveries,
    dead-lettering and migration between backends, so it is the key for de-duplication.
    Treat a message as immutable once it has been sent.
    """

    body: bytes = b""
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    message_id: str = field(default_factory=new_message_id)
    correlation_id: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    timestamp: datetime | None = None
    delay: timedelta | None = None
    ttl: timedelta | None = None
    priority: int | None = None

    @property
    def subject(self) -> str | None:
        """The routing subject (``send(subject=...)``), carried in the ``x-unimq-subject`` header."""
        return self.headers.get("x-unimq-subject") if self.headers else None


class Settler(Protocol):
    """What a :class:`Delivery` settles through: the core's settlement for one consumer.

    Delivery calls only these four methods, so it depends on this small interface rather than on
    the consumer (no import cycle; see :mod:`unimq.settlement`).
    """

    destination: str

    def ack(self, delivery: Delivery) -> Awaitable[None] | None: ...
    async def nack(self, delivery: Delivery, delay: float | None) -> None: ...
    async def reject(self, delivery: Delivery, reason: str) -> None: ...
    async def extend(self, delivery: Delivery, seconds: float) -> None: ...
    async def reply(self, delivery: Delivery, body: bytes, fields: dict[str, Any]) -> Message: ...


class Delivery:
    """One received message and the means to settle it.

    Settlement is idempotent: the first ``ack``/``nack``/``reject`` wins and later calls do
    nothing, so a double ack is harmless. ``attempt`` counts deliveries, starting at 1.
    ``native`` is the backend's raw message; ``token`` is what the driver needs to settle it.
    ``expires_at`` (epoch seconds, 0 = never) is set by drivers whose TTL is emulated: the core
    drops a delivery that is already expired when it arrives.
    """

    __slots__ = ("_settler", "attempt", "expires_at", "message", "native", "payload", "settled", "span", "token",
                 "wire")

    def __init__(
        self, message: Message, attempt: int = 1, native: Any = None, token: Any = None, expires_at: float = 0.0,
    ) -> None:
        self.message = message
        self.attempt = attempt
        self.native = native
        self.token = token
        self.expires_at = expires_at
        self.payload: Any = message.body
        self.settled = False
        self.span: Any = None  # the OpenTelemetry span, when unimq.telemetry is enabled
        #: The message as the broker delivered it, when a middleware changed ``message`` on receipt:
        #: what dead-letter and redelivery copies are made of (never the resolved or decrypted body).
        self.wire: Message | None = None
        self._settler: Settler | None = None

    def __repr__(self) -> str:
        return f"Delivery(message_id={self.message.message_id!r}, attempt={self.attempt}, settled={self.settled})"

    @property
    def destination(self) -> str:
        """The destination this delivery was received from."""
        return self._bound().destination

    def _bound(self) -> Settler:
        if self._settler is None:
            raise RuntimeError("this Delivery was not received through a unimq Consumer")
        return self._settler

    async def ack(self) -> None:
        """The message is processed: remove it for this group.

        Acks are batched by the core where the backend allows (see ``docs/adapters.md``): ``ack()``
        returns once the ack is queued; a consumer's ``close()`` waits until every queued ack was
        sent. An ack that cannot be sent is logged and the message comes back (at-least-once).
        """
        if not self.settled:
            self.settled = True
            # The per-message hot path: the settler queues the ack and hands back an awaitable only
            # when the caller must wait (a full ack queue, or a backend that acks one at a time).
            wait = self._bound().ack(self)
            if wait is not None:
                await wait

    async def nack(self, delay: timedelta | float | None = None) -> None:
        """Processing failed: redeliver now, or not before ``delay`` (seconds or timedelta)."""
        if not self.settled:
            seconds = None if delay is None else durations.seconds(delay, "nack(delay=)")
            settler = self._bound()
            await settler.nack(self, seconds or None)

    async def reject(self, reason: str = "") -> None:
        """The message can never be processed: move it to the dead-letter destination."""
        if not self.settled:
            if not isinstance(reason, str):
                raise ConfigError(f"reject(reason=) must be a str, got {type(reason).__name__}")
            await self._bound().reject(self, reason)

    async def reply(self, body: bytes, **fields: Any) -> Message:
        """Send ``body`` to this message's ``reply_to``, correlated with it (``broker.request``'s other side).
        ``fields`` are ``send()``'s (headers, key, ...). ConfigError if the message has no ``reply_to``."""
        return await self._bound().reply(self, body, fields)

    async def extend(self, duration: timedelta | float) -> None:
        """Keep the lock (visibility) for ``duration`` longer, so the message is not redelivered."""
        seconds = durations.seconds(duration, "extend(duration)", allow_zero=False)
        await self._bound().extend(self, seconds)
