"""Reading a JetStream durable pull consumer: one group of one destination.

Pull requests go out one at a time (``batch`` = the room the core gives, ``expires`` = the wait),
so messages received but not yet handed out never exceed the consumer's prefetch. Each request
has its own reply subject under one wildcard inbox, so a late status (408) of an old request
cannot end the current one.

Settlement is JetStream's own: ack, ``nak(delay)`` and ``in_progress``. Dead-lettering (a copy to
``<destination>.dlq``, then an ack), expiry and ``max_deliveries`` are the core's; the limit is read
from the durable's description, where ``ensure()`` recorded it for every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from unimq.driver import AckBatch, ReceiveSettings, Subscription
from unimq.errors import NotFound
from unimq.message import Delivery
from unimq.reliability import EXPIRES_AT, NOT_BEFORE, epoch_ms, seconds_until
from unimq_nats.mapping import described, durable_name, routing_filters, to_message, with_subject

if TYPE_CHECKING:
    from unimq_nats.driver import NatsDriver

#: Pull requests shorter than this are sent with no_wait (the server answers at once).
_NO_WAIT_BELOW = 0.05
#: Longest a pull request stays open on the server. close() lets the open one end before it naks
#: what it holds: the server would deliver a nak'ed message into it (and nats-server 2.9 then
#: loses one until ack_wait and delivers another twice), so this bounds how long close() takes.
_PULL_MAX = 0.1
#: How much later than our own deadline the server's end of a request (408) may arrive.
_PULL_GRACE = 0.05


class JetStreamSubscription(Subscription):
    #: An ack is a publish without a reply; batched, the core spends no coroutine per ack.
    ack_batch = AckBatch(max_batch=1000, max_in_flight=1)

    def __init__(self, driver: NatsDriver, destination: str, group: str | None, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._destination = destination
        self._group = group
        self._settings = settings
        self._durable = durable_name(group)
        self._stream = ""
        self._ack_wait = settings.lock_timeout or driver.options.lock_timeout
        self._sub: NatsSubscription | None = None
        self._inbox = ""
        self._next_subject = ""
        self._queue: deque[Msg] = deque()
        self._wake = asyncio.Event()
        self._request = ""
        self._request_seq = 0
        self._left = 0
        self._request_deadline = 0.0
        self._deleted = False
        self._closing = False
        self._inflight: dict[int, Msg] = {}
        self._keepalive: dict[int, asyncio.Task[None]] = {}

    async def open(self) -> None:
        driver = self._driver
        self._stream = await driver.stream_ready(self._destination)
        filters = routing_filters(self._destination, self._settings.subject) if driver.routing else None
        info = await driver.durable(self._stream, self._destination, self._durable, self._settings.lock_timeout,
                                    self._settings.start, filters=filters)
        self._ack_wait = info.config.ack_wait or self._ack_wait
        limit = described(info.config.description).get("max_deliveries")
        self.max_deliveries = int(limit) if limit else None
        nc = driver.nc
        self._inbox = nc.new_inbox()
        self._next_subject = f"{driver.js_prefix}.CONSUMER.MSG.NEXT.{self._stream}.{self._durable}"
        self._sub = await nc.subscribe(self._inbox + ".*", cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers and not msg.data else None
        if status:
            if status != "100" and msg.subject == self._request:
                self._left = 0
                if status == "409" and "deleted" in headers.get("Description", "").lower():  # type: ignore[union-attr]
                    self._deleted = True
        else:
            self._queue.append(msg)
            self._left -= 1
        self._wake.set()

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._closing:
            if self._deleted:
                raise NotFound(f"nats: durable {self._durable!r} of stream {self._stream!r} was deleted")
            if self._queue:
                out = await self._take(max_messages)
                if out:
                    return out
                continue
            now = loop.time()
            if self._left <= 0 or now >= self._request_deadline:
                await self._pull(max_messages, deadline - now)
            wait = min(deadline, self._request_deadline) - loop.time()
            if wait <= 0:
                if loop.time() >= deadline:
                    return []
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            if not self._queue and loop.time() >= deadline:
                return []
        return []

    async def _pull(self, batch: int, wait: float) -> None:
        self._request_seq += 1
        self._request = f"{self._inbox}.{self._request_seq}"
        now = asyncio.get_running_loop().time()
        if wait < _NO_WAIT_BELOW:
            request: dict[str, object] = {"batch": batch, "no_wait": True}
            self._request_deadline = now + self._driver.options.api_timeout
        else:
            wait = min(wait, _PULL_MAX)
            request = {"batch": batch, "expires": int(wait * 1e9)}
            self._request_deadline = now + wait
        self._left = batch
        await self._driver.nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._request)

    async def _take(self, limit: int) -> list[Delivery]:
        """Hand out queued messages; one not due yet (emulated delay) is nak'ed until it is."""
        out: list[Delivery] = []
        queue = self._queue
        deferrals = self._driver.deferrals
        routing = self._driver.routing
        while queue and len(out) < limit:
            msg = queue.popleft()
            headers = with_subject(self._destination, msg.subject, msg.headers) if routing else msg.headers
            meta = msg.metadata
            seq = meta.sequence.stream
            expires = 0.0
            if headers and (EXPIRES_AT in headers or NOT_BEFORE in headers):
                due = seconds_until(headers, NOT_BEFORE)
                if 0 < due < float("inf"):
                    deferrals.defer(self._stream, self._durable, seq)
                    await msg.nak(delay=due)
                    continue
                expires = epoch_ms(headers, EXPIRES_AT) / 1000
            attempt = meta.num_delivered - deferrals.count(self._stream, self._durable, seq)
            message = to_message(msg.data, headers, f"{self._stream}-{seq}", meta.timestamp)
            self._inflight[id(msg)] = msg
            out.append(Delivery(message, attempt, msg, msg, expires))
        return out

    def _settle(self, msg: Msg) -> None:
        self._inflight.pop(id(msg), None)
        task = self._keepalive.pop(id(msg), None)
        if task is not None:
            task.cancel()

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        forget = self._driver.deferrals.forget
        for delivery in deliveries:
            msg: Msg = delivery.token
            self._settle(msg)
            forget(self._stream, self._durable, msg.metadata.sequence.stream)
            with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
                await msg.ack()

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        """nak; while our pull request is still open, first let it end: nats-server 2.9 delivers a
        message nak'ed during an open pull into that request and loses track of it (one message
        came back only after ack_wait, another twice), as on close."""
        msg: Msg = delivery.token
        self._settle(msg)
        if self._left > 0:
            await self._request_ended()
        with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await msg.nak(delay=delay)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        msg: Msg = delivery.token
        await msg.in_progress()
        old = self._keepalive.pop(id(msg), None)
        if old is not None:
            old.cancel()
        if seconds > self._ack_wait and id(msg) in self._inflight:
            self._keepalive[id(msg)] = asyncio.create_task(self._renew(msg, seconds))

    async def _renew(self, msg: Msg, seconds: float) -> None:
        """Keep the lock for ``seconds`` when that is longer than ack_wait: in_progress every ack_wait/2."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds - self._ack_wait
        interval = self._ack_wait / 2
        while loop.time() < until:
            await asyncio.sleep(min(interval, max(0.0, until - loop.time())))
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    async def close(self) -> None:
        """Let the open pull request end, stop receiving, then nak what is held: redelivered at once."""
        self._closing = True
        for task in self._keepalive.values():
            task.cancel()
        self._keepalive.clear()
        if not self._driver.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                if self._queue or self._inflight:
                    await self._request_ended()
                if self._sub is not None:  # shielded: a drain cut short would break nats-py (NatsDriver.flush)
                    await asyncio.shield(asyncio.ensure_future(self._sub.drain()))  # type: ignore[no-untyped-call]
                for msg in [*self._queue, *self._inflight.values()]:
                    await msg.nak()
        self._queue.clear()
        self._inflight.clear()

    async def _request_ended(self) -> None:
        """Wait (at most _PULL_MAX) for the server to end our pull request: fulfilled or expired."""
        loop = asyncio.get_running_loop()
        end = self._request_deadline + _PULL_GRACE
        while self._left > 0 and loop.time() < end:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(end):
                    await self._wake.wait()
