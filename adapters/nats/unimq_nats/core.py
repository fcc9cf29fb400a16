"""Core NATS (``?jetstream=false``): a queue-group subscription, at-most-once.

Nothing is stored: a message published while no member of a group is subscribed never reaches
that group. Settlement has nothing to settle: ack is a no-op, and a nack cannot redeliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from unimq.driver import ReceiveSettings, Subscription
from unimq.errors import CapabilityError
from unimq.message import Delivery
from unimq_nats.mapping import durable_name, to_message

if TYPE_CHECKING:
    from unimq_nats.driver import NatsDriver

log = logging.getLogger("unimq.nats")


class CoreSubscription(Subscription):
    ack_batch = None

    def __init__(self, driver: NatsDriver, destination: str, group: str | None, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._destination = destination
        self._queue_group = durable_name(group)
        self._limit = driver.options.core_pending_limit
        self._buffer: deque[Msg] = deque()
        self._wake = asyncio.Event()
        self._sub: NatsSubscription | None = None
        self._dropped = 0
        self._seq = 0

    async def open(self) -> None:
        nc = self._driver.nc
        self._sub = await nc.subscribe(self._destination, queue=self._queue_group, cb=self._on_msg)
        # A round trip, so the server has the subscription when open() returns: a message sent
        # from another connection after that reaches the group (nothing waits for a late one).
        await nc.flush()

    async def _on_msg(self, msg: Msg) -> None:
        if len(self._buffer) >= self._limit:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 10_000 == 0:
                log.warning("nats core: %s dropped %d messages (slow consumer, core_pending_limit=%d)",
                            self._destination, self._dropped, self._limit)
            return
        self._buffer.append(msg)
        self._wake.set()

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        if not self._buffer and timeout > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        out: list[Delivery] = []
        buffer = self._buffer
        while buffer and len(out) < max_messages:
            msg = buffer.popleft()
            self._seq += 1
            out.append(Delivery(to_message(msg.data, msg.headers, f"core-{id(self)}-{self._seq}", None), 1, msg))
        return out

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to do: core NATS delivered the message once and forgot it."""

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        raise CapabilityError(
            "nats-core cannot redeliver a message (at-most-once, persistence 'none'): "
            "use JetStream (drop ?jetstream=false) or retry inside the handler"
        )

    async def close(self) -> None:
        self._buffer.clear()
        if self._sub is not None and not self._driver.nc.is_closed:
            await self._sub.unsubscribe()
