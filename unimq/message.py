"""The message and the delivery: the two objects on the per-message hot path.

Both are plain slotted classes rather than pydantic models, because they are created once per
message; validation happens once, at the producer, against the backend's capabilities.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unimq.broker import Consumer


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


class Delivery:
    """One received message and the means to settle it.

    Settlement is idempotent: the first ``ack``/``nack``/``reject`` wins and later calls do
    nothing, so a double ack is harmless. ``attempt`` counts deliveries, starting at 1.
    ``native`` is the backend's raw message; ``token`` is what the driver needs to settle it.
    """

    __slots__ = ("_consumer", "attempt", "message", "native", "payload", "settled", "span", "token")

    def __init__(self, message: Message, attempt: int = 1, native: Any = None, token: Any = None) -> None:
        self.message = message
        self.attempt = attempt
        self.native = native
        self.token = token
        self.payload: Any = message.body
        self.settled = False
        self.span: Any = None  # the OpenTelemetry span, when unimq.telemetry is enabled
        self._consumer: Consumer | None = None

    def __repr__(self) -> str:
        return f"Delivery(message_id={self.message.message_id!r}, attempt={self.attempt}, settled={self.settled})"

    def _bound(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("this Delivery was not received through a unimq Consumer")
        return self._consumer

    async def ack(self) -> None:
        """The message is processed: remove it for this group."""
        if not self.settled:
            self.settled = True
            await self._bound()._ack(self)

    async def nack(self, delay: timedelta | float | None = None) -> None:
        """Processing failed: redeliver now, or not before ``delay``."""
        if not self.settled:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
            consumer = self._bound()
            consumer._check_nack(seconds)
            self.settled = True
            await consumer._nack(self, seconds or None)

    async def reject(self, reason: str = "") -> None:
        """The message can never be processed: move it to the dead-letter destination."""
        if not self.settled:
            consumer = self._bound()
            consumer._check_reject()
            self.settled = True
            await consumer._reject(self, reason)

    async def extend(self, duration: timedelta | float) -> None:
        """Keep the lock (visibility) for ``duration`` longer, so the message is not redelivered."""
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        await self._bound()._extend(self, seconds)
