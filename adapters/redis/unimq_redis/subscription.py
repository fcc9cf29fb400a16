"""A consumer in a Redis consumer group: XREADGROUP, XACK, XAUTOCLAIM redelivery.

What the core does around it (``unimq.settlement``): ack batching (``ack_many`` is one XACK),
dropping expired entries (``Delivery.expires_at``), dead-lettering past ``max_deliveries`` and on
``reject()`` (a copy XADDed to ``<stream>:dlq`` through the driver, then an XACK).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from redis.exceptions import ResponseError

from unimq.driver import AckBatch, ReceiveSettings, Subscription
from unimq.message import Delivery, Message
from unimq_redis import scripts
from unimq_redis.cluster import pack
from unimq_redis.fields import BODY_FIELD as _BODY
from unimq_redis.fields import ID_FIELD as _ID
from unimq_redis.fields import entry_time, from_flat, now_ms

if TYPE_CHECKING:
    from unimq_redis.driver import RedisDriver

#: Most deliveries one :meth:`RedisSubscription.receive` builds and returns. Entries read beyond it
#: wait as hiredis replies, so the ``Message``/``Delivery`` objects of a large prefetch are made,
#: handled and freed a chunk at a time (held 1,000 at once per consumer, they outlived the young
#: GC generations and the collector's passes cost more than the rest of the loop), and the core's
#: ack batcher flushes once per chunk, so an ``ack_many`` carries the next read while the
#: application handles the chunk before it.
CHUNK = 100
#: Most entries one XREADGROUP of :meth:`RedisSubscription.receive` reads: three chunks, so while
#: one is handled two wait, and the read an ``ack_many`` carries has two chunks' time to return.
READ = 3 * CHUNK


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

    #: One XACK takes any number of ids; two in flight keep acks flowing while one is answered.
    ack_batch: ClassVar[AckBatch | None] = AckBatch(max_batch=1000, max_in_flight=2)

    def __init__(self, driver: RedisDriver, destination: str, group: str | None, settings: ReceiveSettings) -> None:
        self._driver = driver
        self._command = driver.command
        self._destination = destination
        self._stream = driver.key(destination)
        self._stream_key = self._stream.encode()
        self._default = group is None
        self._group = group or driver.options.default_group
        self._consumer = f"unimq-{uuid.uuid4().hex}"
        self._read = [b"XREADGROUP", b"GROUP", self._group.encode(), self._consumer.encode(), b"COUNT"]
        #: ``XACK <stream> <group>`` in RESP, without the array header (which counts the ids too).
        self._xack = b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in (b"XACK", self._stream_key, self._group.encode()))
        self._settings = settings
        self._lock = settings.lock_timeout or driver.options.lock_timeout
        self._sends = driver.key(destination, ":delayed")
        self._retries = driver.key(destination, f":delayed:{self._group}")
        self._cursor = "0-0"
        self._next_maintenance = 0.0
        self._extended: dict[bytes, float] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self._closed = False
        #: Entries read but not handed out yet (raw XREADGROUP entries): the rest of a read larger
        #: than :data:`CHUNK`, or an ``ack_many``'s (its XACK and an XREADGROUP in one write).
        #: ``_carried``: done when the XREADGROUP an ``ack_many`` carries is answered, and how many
        #: entries it asked for. ``_draining``: the last read was full (a backlog).
        self._ahead: list[list[Any]] = []
        self._carried: tuple[asyncio.Future[None], int] | None = None
        self._draining = False
        self._last_count = 0
        self._busy = False

    @property
    def consumer_name(self) -> str:
        return self._consumer

    async def open(self) -> None:
        """Read the destination's config (what ``ensure()`` wrote, from any process) and join the group."""
        config = await self._driver.config(self._destination, refresh=True)
        if self._settings.lock_timeout is None and config.lock_timeout:
            self._lock = config.lock_timeout
        self.lock_timeout = self._lock
        self.max_deliveries = config.max_deliveries
        self.dead_letter_expired = config.dead_letter_expired
        start = group_start(self._settings.start, "0" if self._default else "$")
        await self._driver.create_group(self._stream, self._group, start)

    # Receiving

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to :data:`CHUNK` deliveries: from the entries read ahead, else from one XREADGROUP.

        The consumer never reads more than the core has room for (``max_messages``): entries read
        ahead and those an ``ack_many`` is reading count against it. Cancel-safe: this awaits only
        its own XREADGROUP (entries it read but could not return stay in the group's pending list,
        reclaimable after the lock timeout or handed back on close) and the maintenance script.
        """
        ahead = self._ahead
        if time.monotonic() >= self._next_maintenance and max_messages > self._held():
            out = await self._maintain(max_messages - self._held())
            if out:
                return await self._unless_closed(out)
        if not ahead and self._carried is not None:
            await asyncio.wait((self._carried[0],), timeout=timeout)
        if not ahead:
            count = min(max_messages - self._held(), READ)
            if count <= 0:
                return []
            ms = int(min(timeout, self._next_maintenance - time.monotonic()) * 1000)
            block = (b"BLOCK", b"%d" % ms) if ms > 0 else ()
            self._busy = True
            try:
                reply: Any = await self._command(
                    self._stream_key, *self._read, b"%d" % count, *block, b"STREAMS", self._stream_key, b">",
                )
            finally:
                self._busy = False
            self._last_count = count
            if not reply:
                self._draining = False
                return []
            entries = reply[0][1]
            self._draining = len(entries) >= count
            ahead += entries
        size = min(max_messages, CHUNK)
        taken = ahead[:size]
        del ahead[:size]
        return await self._unless_closed(_deliveries(taken))

    def _held(self) -> int:
        """Entries this consumer has read, or is reading, and not handed to the core yet."""
        return len(self._ahead) + (self._carried[1] if self._carried is not None else 0)

    async def _unless_closed(self, deliveries: list[Delivery]) -> list[Delivery]:
        """A read that was in flight when :meth:`close` ran hands its entries straight back."""
        if self._closed:
            await self._release()
            return []
        return deliveries

    async def _maintain(self, count: int) -> list[Delivery]:
        """Move due delayed messages, then reclaim entries idle longer than the lock timeout."""
        driver = self._driver
        cursor, claimed, due = await driver.bounded(driver.maintain_script(
            keys=[self._stream, self._sends, self._retries],
            args=[self._group, self._consumer, int(self._lock * 1000), count, self._cursor, now_ms(),
                  driver.options.maxlen or 0],
        ))
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        interval = min(driver.options.maintenance_interval, self._lock / 2)
        wait = interval if self._cursor == "0-0" else 0.0
        if due:
            wait = min(wait, max(0.0, int(due) / 1000 - time.time()))
        self._next_maintenance = time.monotonic() + wait
        return _deliveries(claimed, counted=True)

    # Settling

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One XACK for the whole batch (an entry another consumer reclaimed is acked all the same).

        While the consumer drains a backlog (its last read was full), no read is in flight and
        this acks at least a chunk (``receive_batch`` then ``ack_many``, or the core's ack batcher
        after a chunk of ``async for``), the XACK carries a non-blocking XREADGROUP for as many
        entries as it acks, in the same write: one round trip per batch instead of two, and on the
        per-message path the next entries are read while the application handles the current
        chunk. Both replies are awaited, so the XACK has reached Redis when this returns; the
        entries read wait for :meth:`receive` (read by this consumer as any read is: reclaimable
        after the lock timeout, handed back on close), so the consumer never holds more entries
        than before the ack.
        """
        if self._extended:
            for delivery in deliveries:
                self._extended.pop(delivery.token, None)
        ids = b"".join([b"$%d\r\n%b\r\n" % (len(d.token), d.token) for d in deliveries])
        command = [b"*%d\r\n" % (len(deliveries) + 3), self._xack, ids]
        count = min(len(deliveries), READ)
        if not (self._draining and count >= min(self._last_count, CHUNK) and not self._busy
                and self._carried is None and not self._closed):
            reply = (await self._driver.send_packed(self._stream_key, command, 1))[0]
            if isinstance(reply, ResponseError):
                raise reply
            return
        pack(command, [*self._read, b"%d" % count, b"STREAMS", self._stream_key, b">"])
        done = asyncio.get_running_loop().create_future()
        self._carried = (done, count)
        try:
            acked, read = await self._driver.send_packed(self._stream_key, command, 2)
        finally:
            self._carried = None
            done.set_result(None)
        if read and not isinstance(read, BaseException):
            entries = read[0][1]
            self._draining = len(entries) >= count
            if not self._closed:
                self._ahead += entries
        else:
            self._draining = False
        if isinstance(acked, ResponseError):
            raise acked

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        self._extended.pop(delivery.token, None)
        driver = self._driver
        if delay:
            await driver.bounded(driver.retry_later_script(
                keys=[self._stream, self._retries],
                args=[self._group, self._consumer, delivery.token, now_ms() + int(delay * 1000)],
            ))
        else:
            await driver.bounded(driver.claim_own_script(
                keys=[self._stream], args=[self._group, self._consumer, scripts.RELEASED_IDLE, delivery.token],
            ))
            self._cursor = "0-0"
            self._next_maintenance = 0.0

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        """Reset the entry's idle time (XCLAIM JUSTID to itself); for a lock longer than the
        lock timeout, keep resetting it in the background until ``seconds`` have passed."""
        touched = await self._driver.bounded(self._driver.claim_own_script(
            keys=[self._stream], args=[self._group, self._consumer, 0, delivery.token],
        ))
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
                    await self._driver.bounded(self._driver.claim_own_script(
                        keys=[self._stream], args=[self._group, self._consumer, 0, *self._extended],
                    ))

    async def close(self) -> None:
        """Hand unsettled entries back (reclaimable at once) and delete the consumer."""
        self._closed = True
        self._ahead = []
        if self._carried is not None:
            # Its XREADGROUP must reach Redis before the release below, or it would take entries
            # for a consumer that no longer hands them back. Non-blocking, and bounded.
            await self._carried[0]
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        await self._release()

    async def _release(self) -> None:
        try:
            await self._driver.bounded(
                self._driver.release_all_script(keys=[self._stream], args=[self._group, self._consumer]))
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise


def _deliveries(entries: Sequence[list[Any]], counted: bool = False) -> list[Delivery]:
    """Deliveries of raw entries: ``[id, [field, value, ...]]`` as XREADGROUP returns them, or
    (``counted``) ``[id, fields, delivery count]`` from the reclaim script.

    The per-entry hot path of every receive: an entry unimq wrote with no metadata (``body``,
    ``p:id``) is built inline, with the timestamp of the previous entry when they share their
    millisecond; anything else goes through :func:`from_flat`.
    """
    out: list[Delivery] = []
    append = out.append
    last_ms = b""
    stamp = None
    for entry in entries:
        entry_id = entry[0]
        flat = entry[1]
        attempt = int(entry[2]) if counted else 1
        if len(flat) == 4 and flat[0] == _BODY and flat[2] == _ID:
            body = flat[1]
            raw_id = flat[3]
            ms = entry_id.partition(b"-")[0]
            if ms != last_ms:
                last_ms = ms
                stamp = entry_time(ms)
            # Positional, as from_flat (tests/adapters/redis/test_fields.py checks both agree).
            message = Message(body, None, {}, raw_id.decode("utf-8", "replace") if raw_id else entry_id.decode(),
                              None, None, None, stamp)
            append(Delivery(message, attempt, (entry_id, {_BODY: body, _ID: raw_id}), entry_id))
            continue
        message, fields, expires = from_flat(entry_id, flat)
        append(Delivery(message, attempt, (entry_id, fields), entry_id, expires / 1000))
    return out
