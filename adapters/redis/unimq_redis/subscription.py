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
from unimq_redis.fields import from_entry, now_ms, to_fields

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
        self._destination = destination
        self._stream = driver.key(destination)
        self._default = group is None
        self._group = group or driver.options.default_group
        self._consumer = f"unimq-{uuid.uuid4().hex}"
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
        block = min(timeout, self._next_maintenance - time.monotonic())
        ms = int(block * 1000)
        reply: Any = await self._client.xreadgroup(
            self._group, self._consumer, {self._stream: ">"}, count=max_messages, block=ms if ms > 0 else None,
        )
        if not reply:
            return []
        return await self._deliveries([(entry_id, fields, 1) for entry_id, fields in reply[0][1]])

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
        entries = [(entry_id, _pairs(fields), int(n)) for entry_id, fields, n in claimed]
        return await self._deliveries(entries)

    async def _deliveries(self, entries: Sequence[tuple[bytes, dict[bytes, bytes], int]]) -> list[Delivery]:
        out: list[Delivery] = []
        drop: list[tuple[Delivery, str | None]] = []
        now = 0
        for entry_id, fields, count in entries:
            message, expires = from_entry(entry_id, fields)
            delivery = Delivery(message, count, (entry_id, fields), entry_id)
            if expires:
                now = now or now_ms()
                if expires <= now:
                    drop.append((delivery, None))
                    continue
            if self._max_deliveries and count > self._max_deliveries:
                drop.append((delivery, f"delivered {count - 1} times without an ack"))
                continue
            out.append(delivery)
        for delivery, reason in drop:
            if reason is None:
                await self.ack(delivery)
            else:
                await self.reject(delivery, reason)
        return out

    # Settling

    async def ack(self, delivery: Delivery) -> None:
        """Batched XACK: acks issued while one XACK is in flight go out together in the next.

        ``ack()`` returns once the XACK carrying its id was answered.
        """
        if self._extended:
            self._extended.pop(delivery.token, None)
        loop = self._loop or asyncio.get_running_loop()
        done = loop.create_future()
        self._acks.append(delivery.token)
        self._ack_waiters.append(done)
        if self._ack_task is None:
            self._ack_task = loop.create_task(self._flush_acks())
        await done

    async def _flush_acks(self) -> None:
        try:
            while self._acks:
                ids, waiters = self._acks, self._ack_waiters
                self._acks, self._ack_waiters = [], []
                try:
                    await self._client.xack(self._stream, self._group, *ids)
                except Exception as exc:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                else:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            self._ack_task = None

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


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A Lua reply's flat [field, value, ...] list as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
