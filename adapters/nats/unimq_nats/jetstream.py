"""Reading a JetStream durable pull consumer: one group of one destination.

Pull requests go out one at a time (``batch`` = the room the core gives, ``expires`` = the wait),
so messages received but not yet handed out never exceed the consumer's prefetch. Each request
has its own reply subject under one wildcard inbox, so a late status (408) of an old request
cannot end the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from unimq.driver import ReceiveSettings, Subscription
from unimq.errors import NotFound, PublishError
from unimq.message import Delivery, Message
from unimq.reliability import EXPIRES_AT, NOT_BEFORE, dead_letter_copy, seconds_until
from unimq_nats.mapping import described, durable_name, to_message

if TYPE_CHECKING:
    from unimq_nats.driver import NatsDriver

#: Pull requests shorter than this are sent with no_wait (the server answers at once).
_NO_WAIT_BELOW = 0.05


class JetStreamSubscription(Subscription):
    def __init__(self, driver: NatsDriver, destination: str, group: str | None, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._destination = destination
        self._group = group
        self._settings = settings
        self._durable = durable_name(group)
        self._stream = ""
        self._ack_wait = settings.lock_timeout or driver.options.lock_timeout
        self._max_deliveries: int | None = None
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
        self._inflight: dict[int, Msg] = {}
        self._keepalive: dict[int, asyncio.Task[None]] = {}

    async def open(self) -> None:
        driver = self._driver
        self._stream = await driver.stream_ready(self._destination)
        info = await driver.durable(self._stream, self._destination, self._durable, self._settings.lock_timeout,
                                    self._settings.start)
        self._ack_wait = info.config.ack_wait or self._ack_wait
        limit = described(info.config.description).get("max_deliveries")
        self._max_deliveries = int(limit) if limit else None
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
        while True:
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
                await asyncio.wait_for(self._wake.wait(), wait)
            if not self._queue and loop.time() >= deadline:
                return []

    async def _pull(self, batch: int, wait: float) -> None:
        self._request_seq += 1
        self._request = f"{self._inbox}.{self._request_seq}"
        now = asyncio.get_running_loop().time()
        if wait < _NO_WAIT_BELOW:
            request: dict[str, object] = {"batch": batch, "no_wait": True}
            self._request_deadline = now + self._driver.options.api_timeout
        else:
            request = {"batch": batch, "expires": int(wait * 1e9)}
            self._request_deadline = now + wait
        self._left = batch
        await self._driver.nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._request)

    async def _take(self, limit: int) -> list[Delivery]:
        """Hand out queued messages, settling on receipt the ones the emulations own."""
        out: list[Delivery] = []
        queue = self._queue
        deferrals = self._driver.deferrals
        while queue and len(out) < limit:
            msg = queue.popleft()
            headers = msg.headers
            meta = msg.metadata
            seq = meta.sequence.stream
            if headers and (EXPIRES_AT in headers or NOT_BEFORE in headers):
                if seconds_until(headers, EXPIRES_AT) <= 0:
                    await msg.ack()
                    continue
                due = seconds_until(headers, NOT_BEFORE)
                if 0 < due < float("inf"):
                    deferrals.defer(self._stream, self._durable, seq)
                    await msg.nak(delay=due)
                    continue
            attempt = meta.num_delivered - deferrals.count(self._stream, self._durable, seq)
            message = to_message(msg.data, headers, f"{self._stream}-{seq}", meta.timestamp)
            if self._max_deliveries and attempt > self._max_deliveries:
                reason = f"delivered {self._max_deliveries} times without an ack"
                await self._dead_letter(msg, message, reason)
                continue
            self._inflight[id(msg)] = msg
            out.append(Delivery(message, attempt, msg, msg))
        return out

    def _settle(self, msg: Msg) -> None:
        self._inflight.pop(id(msg), None)
        task = self._keepalive.pop(id(msg), None)
        if task is not None:
            task.cancel()

    async def ack(self, delivery: Delivery) -> None:
        msg: Msg = delivery.token
        self._settle(msg)
        self._driver.deferrals.forget(self._stream, self._durable, msg.metadata.sequence.stream)
        with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await msg.ack()

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        msg: Msg = delivery.token
        self._settle(msg)
        with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await msg.nak(delay=delay)

    async def reject(self, delivery: Delivery, reason: str) -> None:
        msg: Msg = delivery.token
        self._settle(msg)
        await self._dead_letter(msg, delivery.message, reason)

    async def _dead_letter(self, msg: Msg, message: Message, reason: str) -> None:
        """Copy to the dead-letter destination, then ``term`` (JetStream itself only emits an advisory)."""
        target = self._driver.dead_letter_destination(self._destination)
        copy = dead_letter_copy(message, reason, self._destination, self._group)
        results = await self._driver.publish(target, [copy])
        if results[0] is not None:
            raise PublishError(f"could not dead-letter {message.message_id} to {target}: {results[0]}",
                               messages=[copy], results=list(results)) from results[0]
        self._driver.deferrals.forget(self._stream, self._durable, msg.metadata.sequence.stream)
        with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await msg.term()

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
        for task in self._keepalive.values():
            task.cancel()
        self._keepalive.clear()
        unsettled = [*self._queue, *self._inflight.values()]
        self._queue.clear()
        self._inflight.clear()
        if self._driver.nc.is_closed:
            return
        with contextlib.suppress(nats.errors.Error):
            for msg in unsettled:
                await msg.nak()
            if self._sub is not None:
                await self._sub.unsubscribe()
