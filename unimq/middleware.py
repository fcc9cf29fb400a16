"""Broker middleware: the one hook around publish, receipt and ack, for every backend.

A middleware sees each message on its way out (``on_publish``: e.g. upload a large body and send
a reference, encrypt), each delivery on its way in before it is decoded (``on_receive``: resolve
the reference, decrypt; raising dead-letters the message with the error as reason), and each
delivery once its ack was sent (``on_acked``: e.g. delete the uploaded body — never before).
Register with ``broker.use(middleware)`` before making producers and consumers; they run in the
order given on the way out and in reverse on the way in. The core calls only the hooks a
middleware overrides, so an unused hook costs nothing per message.
"""

from __future__ import annotations

from collections.abc import Sequence

from unimq.message import Delivery, Message


class Nack(Exception):
    """Raised by ``on_receive`` to hand a delivery back for redelivery (after ``delay`` seconds)
    instead of dead-lettering it, e.g. a payload version this consumer does not know yet."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Middleware:
    """Override the hooks you need."""

    async def on_publish(self, destination: str, message: Message) -> Message:
        """Return the message to send instead of ``message`` (or ``message`` itself). Raising fails the send."""
        return message

    async def on_receive(self, destination: str, delivery: Delivery) -> None:
        """Change ``delivery.message`` before it is decoded. Raising dead-letters the delivery;
        raising :class:`Nack` hands it back for redelivery."""

    async def on_acked(self, destination: str, deliveries: Sequence[Delivery]) -> None:
        """Called after the broker accepted the ack of ``deliveries``. Errors are logged, not raised."""


def overrides(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


class Chain:
    """The middlewares of one producer or consumer, split by the hooks they override (data, once)."""

    __slots__ = ("acked", "publish", "receive")

    def __init__(self, middlewares: Sequence[Middleware]) -> None:
        self.publish = tuple(m for m in middlewares if overrides(m, "on_publish"))
        self.receive = tuple(m for m in reversed(middlewares) if overrides(m, "on_receive"))
        self.acked = tuple(m for m in reversed(middlewares) if overrides(m, "on_acked"))

    async def published(self, destination: str, messages: list[Message]) -> list[Message]:
        out = []
        for original in messages:
            message = original
            for middleware in self.publish:
                message = await middleware.on_publish(destination, message)
            out.append(message)
        return out

    async def received(self, destination: str, delivery: Delivery) -> None:
        for middleware in self.receive:
            await middleware.on_receive(destination, delivery)
