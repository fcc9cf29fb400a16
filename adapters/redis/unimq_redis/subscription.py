"""A consumer in a Redis consumer group: XREADGROUP, XACK, XAUTOCLAIM redelivery."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from unimq.driver import ReceiveSettings, Subscription
from unimq.message import Delivery
from unimq.reliability import dead_letter_copy
from unimq_redis import scripts
from unimq_redis.fields import from_flat, now_ms, to_fields

if TYPE_CHECKING:
    from unimq_redis.driver import RedisDriver

#: Header of a dead-lettered entry naming the stream entry it was copied from.
ORIGINAL_ID = "x-unimq-dead-letter-original-id"


def group_start(start: Any, default: str) -> str:
    """The id a new group starts after: ``0`` (earliest), ``$`` (latest) or just before a time."""
    if start is None:
        return default
    if start == "earliest":
        return "0"
    if start == "latest":
        return "$"
    ms = int(start.timestamp() * 1000) if isinstance(start, datetime) else int(start)
    return f"{ms - 1}-18446744073709551615" if ms > 0 else "0"


class RedisSubscription(Subscription):
    """One consumer (a unique name) of one group of one stream."""

    def __init__(self, driver: RedisDriver, destination: str, group: str | None, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._client = driver.client
        self._command = driver.command
        self._destination = destination
        self._stream = driver.key(destination)
        self._stream_key = self._stream.encode()
        self._default = group is None
        self._group = group or driver.options.default_group
        self._consumer = f"unimq-{uuid.uuid4().hex}"
        self._read = [b"XREADGROUP", b"GROUP", self._group.encode(), self._consumer.encode(), b"COUNT"]
        self._xack = [b"XACK", self._stream_key, self._group.encode()]
        self._settings = settings
        self._lock = settings.lock_timeout or driver.options.lock_timeout
        self._max_deliveries: int | None = None
        self._sends = driver.key(destination, ":delayed")
        self._retries = driver.key(destination, f":delayed:{self._group}")
        self._cursor = "0-0"
        self._next_maintenance = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acks: list[bytes] = []
        self._ack_waiters: list[asyncio.Future[None]] = []
        self._ack_busy = False
        self._ack_task: asyncio.Task[None] | None = None
        self._extended: dict[bytes, float] = {}
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def consumer_name(self) -> str:
        return self._consumer

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        config = await self._driver.config(self._destination, refresh=True)
        if self._settings.lock_timeout is None and config.lock_timeout:
            self._lock = config.lock_timeout
        self._max_deliveries = config.max_deliveries
        start = group_start(self._settings.start, "0" if self._default else "$")
        await self._driver.create_group(self._stream, self._group, start)

    # Receiving

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        if time.monotonic() >= self._next_maintenance:
            out = await self._maintain(max_messages)
            if out:
                return out
        ms = int(min(timeout, self._next_maintenance - time.monotonic()) * 1000)
        block = (b"BLOCK", b"%d" % ms) if ms > 0 else ()
        reply: Any = await self._command(
            *self._read, b"%d" % max_messages, *block, b"STREAMS", self._stream_key, b">",
        )
        if not reply:
            return []
        return await self._deliveries(reply[0][1])

    async def _maintain(self, count: int) -> list[Delivery]:
        """Move due delayed messages, then reclaim entries idle longer than the lock timeout."""
        driver = self._driver
        cursor, claimed, due = await driver.maintain_script(
            keys=[self._stream, self._sends, self._retries],
            args=[self._group, self._consumer, int(self._lock * 1000), count, self._cursor, now_ms(),
                  driver.options.maxlen or 0],
        )
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        interval = min(driver.options.maintenance_interval, self._lock / 2)
        wait = interval if self._cursor == "0-0" else 0.0
        if due:
            wait = min(wait, max(0.0, int(due) / 1000 - time.time()))
        self._next_maintenance = time.monotonic() + wait
        return await self._deliveries(claimed)

    async def _deliveries(self, entries: Sequence[list[Any]]) -> list[Delivery]:
        """Deliveries of raw entries: ``[id, [field, value, ...]]`` as XREADGROUP returns them, or
        ``[id, fields, delivery count]`` from the reclaim script. Expired entries are acked and
        entries past ``max_deliveries`` dead-lettered instead."""
        out: list[Delivery] = []
        expired: list[Delivery] = []
        exhausted: list[Delivery] = []
        now = 0
        for entry in entries:
            entry_id = entry[0]
            count = int(entry[2]) if len(entry) > 2 else 1
            message, fields, expires = from_flat(entry_id, entry[1])
            delivery = Delivery(message, count, (entry_id, fields), entry_id)
            if expires:
                now = now or now_ms()
                if expires <= now:
                    expired.append(delivery)
                    continue
            if count > 1 and self._max_deliveries and count > self._max_deliveries:
                exhausted.append(delivery)
                continue
            out.append(delivery)
        if expired:
            await self.ack_many(expired)
        for delivery in exhausted:
            await self.reject(delivery, f"delivered {delivery.attempt - 1} times without an ack")
        return out

    # Settling

    async def ack(self, delivery: Delivery) -> None:
        """XACK; acks issued while one XACK is in flight go out together in the next.

        With no XACK in flight the ack is sent at once, from the caller's task (the sequential
        receive/ack loop costs no task or future). ``ack()`` returns once the XACK carrying its
        id was answered.
        """
        if self._extended:
            self._extended.pop(delivery.token, None)
        if self._ack_busy:
            done = (self._loop or asyncio.get_running_loop()).create_future()
            self._acks.append(delivery.token)
            self._ack_waiters.append(done)
            await done
            return
        self._ack_busy = True
        try:
            await self._command(*self._xack, delivery.token)
        finally:
            if self._acks:
                self._ack_task = (self._loop or asyncio.get_running_loop()).create_task(self._flush_acks())
            else:
                self._ack_busy = False

    async def _flush_acks(self) -> None:
        """Send the acks that queued behind an XACK in flight, until none are left."""
        try:
            while self._acks:
                ids, waiters = self._acks, self._ack_waiters
                self._acks, self._ack_waiters = [], []
                try:
                    await self._command(*self._xack, *ids)
                except Exception as exc:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                else:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            self._ack_busy = False
            self._ack_task = None

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One XACK for the whole batch."""
        if not deliveries:
            return
        if self._extended:
            for delivery in deliveries:
                self._extended.pop(delivery.token, None)
        await self._command(*self._xack, *[d.token for d in deliveries])

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        self._extended.pop(delivery.token, None)
        driver = self._driver
        if delay:
            await driver.retry_later_script(
                keys=[self._stream, self._retries],
                args=[self._group, self._consumer, delivery.token, now_ms() + int(delay * 1000)],
            )
        else:
            await driver.claim_own_script(
                keys=[self._stream], args=[self._group, self._consumer, scripts.RELEASED_IDLE, delivery.token],
            )
            self._cursor = "0-0"
            self._next_maintenance = 0.0

    async def reject(self, delivery: Delivery, reason: str) -> None:
        """XADD a copy to ``<stream>:dlq`` and XACK the original, in one MULTI/EXEC."""
        self._extended.pop(delivery.token, None)
        copy = dead_letter_copy(delivery.message, reason, self._destination, None if self._default else self._group)
        copy.headers[ORIGINAL_ID] = delivery.token.decode()
        dlq = self._driver.key(self._driver.dead_letter_destination(self._destination))
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.execute_command("XADD", dlq, "*", *to_fields(copy))
            pipe.xack(self._stream, self._group, delivery.token)
            await pipe.execute()

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        """Reset the entry's idle time (XCLAIM JUSTID to itself); for a lock longer than the
        lock timeout, keep resetting it in the background until ``seconds`` have passed."""
        touched = await self._driver.claim_own_script(
            keys=[self._stream], args=[self._group, self._consumer, 0, delivery.token],
        )
        if touched and seconds > self._lock:
            self._extended[delivery.token] = time.monotonic() + seconds
            if self._keepalive is None or self._keepalive.done():
                self._keepalive = asyncio.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while self._extended:
            await asyncio.sleep(self._lock / 3)
            now = time.monotonic()
            for entry_id, until in list(self._extended.items()):
                if until - now < self._lock / 3:
                    self._extended.pop(entry_id, None)
            if self._extended:
                with contextlib.suppress(Exception):
                    await self._driver.claim_own_script(
                        keys=[self._stream], args=[self._group, self._consumer, 0, *self._extended],
                    )

    async def close(self) -> None:
        """Flush acks, hand unsettled entries back (reclaimable at once), delete the consumer."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self._ack_task is not None:
            await asyncio.wait([self._ack_task])
        try:
            await self._driver.release_all_script(keys=[self._stream], args=[self._group, self._consumer])
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
