"""Idempotent consumers: each message's effect applied once, although every backend redelivers.

A store remembers which message keys (``message_id`` by default) were processed. Processing one
goes through :meth:`once`: **claim** the key, run the handler, then **commit** (the key is done:
every later copy is acked without running the handler) or **release** (the handler failed: a
redelivery processes it again). A claim is a *lease*: a worker that dies mid-handler stops renewing
it, it expires, and the redelivered message is processed then, so nothing is lost. A copy that
arrives while the key is claimed elsewhere waits for that claim's outcome instead of running twice.

Stores: :class:`MemoryStore` (one process; tests), ``unimq_redis.idempotency.RedisStore`` (every
process of a group; atomic Lua, TTL) and :class:`SqlInbox` (the "inbox": the key is inserted in the
same database transaction as the handler's own writes, so effect and mark commit or roll back
together). The guarantees per backend are in ``docs/exactly-once.md``.

``broker.consume(..., idempotency=store)`` wraps its handler with :func:`idempotent`; an
``async for`` loop uses ``async with store.once(delivery) as fresh: if fresh: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from unimq.durations import seconds
from unimq.errors import ConfigError, Timeout
from unimq.message import Delivery

log = logging.getLogger("unimq.idempotency")

#: ``key(delivery) -> str``: what identifies "the same message" (default: its ``message_id``).
KeyFunction = Callable[[Delivery], str]
Handler = Callable[[Delivery], Awaitable[Any] | Any]
AsyncHandler = Callable[[Delivery], Awaitable[Any]]


class InFlightElsewhere(Timeout):
    """The message is being processed by another worker whose claim outlived our wait.

    Retryable: the runner nacks it, and the redelivery finds the key done (acked) or released
    (processed then). Raised rather than processed, which would apply the effect twice.
    """


class Claim(enum.Enum):
    """The answer of :meth:`LeaseStore.claim`."""

    CLAIMED = "claimed"  #: ours: process it, then commit or release
    DONE = "done"  #: processed before: ack without processing
    BUSY = "busy"  #: claimed by another worker whose lease has not expired


@dataclass(slots=True)
class Attempt:
    """What ``async with store.once(delivery) as attempt`` yields; true when the handler must run.

    ``transaction`` is the database connection or session of a :class:`SqlInbox` attempt: write the
    handler's changes through it so they commit together with the processed mark.
    """

    key: str
    fresh: bool
    transaction: Any = None

    def __bool__(self) -> bool:
        return self.fresh


_current: ContextVar[Attempt | None] = ContextVar("unimq_idempotency_attempt", default=None)


def current() -> Attempt:
    """The attempt the running handler belongs to (for a handler wrapped by :func:`idempotent`).

    With a :class:`SqlInbox`, ``current().transaction`` is where the handler writes.
    """
    attempt = _current.get()
    if attempt is None:
        raise RuntimeError("no idempotent attempt is running here: call current() inside the handler "
                           "that idempotent()/consume(idempotency=...) wraps, or inside store.once()")
    return attempt


@runtime_checkable
class IdempotencyStore(Protocol):
    """What :func:`idempotent` needs: run a block at most once per key (see :meth:`LeaseStore.once`)."""

    def once(self, delivery: Delivery | str,
             key: KeyFunction | None = None) -> contextlib.AbstractAsyncContextManager[Attempt]: ...


def key_of(delivery: Delivery | str, key: KeyFunction | None = None) -> str:
    """The idempotency key of a delivery; ConfigError if it has none (never a silent pass-through)."""
    if isinstance(delivery, str):
        value: object = delivery
    elif key is not None:
        value = key(delivery)
    else:
        value = delivery.message.message_id
    if not isinstance(value, str) or not value:
        what = "the key function returned no key" if key is not None else "the message has no message_id"
        raise ConfigError(f"idempotency: {what} ({value!r}); send messages with a message_id or pass "
                          "idempotency_key=<function of the delivery returning a non-empty str>")
    return value


class LeaseStore:
    """A store of claims with leases; subclasses implement the four atomic operations.

    ``lease``: how long a claim lives without renewal (a dead worker's message is processed again
    after it); the claim is renewed every ``lease / 3`` while the handler runs, so a slow handler
    keeps it. ``remember``: how long a processed key is remembered (longer than the broker can
    redeliver or a producer can resend). ``wait``: how long a copy waits for another worker's
    claim before :class:`InFlightElsewhere` (default: two leases).
    """

    def __init__(self, *, lease: timedelta | float = 30.0, remember: timedelta | float = timedelta(days=1),
                 wait: timedelta | float | None = None) -> None:
        self.lease = seconds(lease, "lease", allow_zero=False)
        self.remember = seconds(remember, "remember", allow_zero=False)
        self.wait = 2 * self.lease if wait is None else seconds(wait, "wait")
        if self.remember < self.lease:
            raise ConfigError(f"remember ({self.remember:g}s) must be at least the lease ({self.lease:g}s)")

    async def claim(self, key: str, owner: str) -> tuple[Claim, float]:
        """Atomically: claim ``key`` for ``owner`` if free; else say DONE, or BUSY with seconds left."""
        raise NotImplementedError

    async def renew(self, key: str, owner: str) -> bool:
        """Extend ``owner``'s claim by a lease; False if it was lost (expired and maybe taken)."""
        raise NotImplementedError

    async def commit(self, key: str, owner: str) -> bool:
        """Mark ``key`` done for ``remember``; False if ``owner``'s claim had been lost meanwhile."""
        raise NotImplementedError

    async def release(self, key: str, owner: str) -> None:
        """Drop ``owner``'s claim so that a redelivery processes the message."""
        raise NotImplementedError

    async def acquire(self, key: str, owner: str) -> bool:
        """Claim ``key``, waiting up to ``wait`` for another worker's claim to end.

        True: ours to process. False: done already. Raises :class:`InFlightElsewhere`.
        """
        deadline = time.monotonic() + self.wait
        pause = 0.01
        while True:
            state, left = await self.claim(key, owner)
            if state is Claim.CLAIMED:
                return True
            if state is Claim.DONE:
                return False
            now = time.monotonic()
            if now >= deadline:
                raise InFlightElsewhere(f"message {key!r} is being processed by another worker (its claim ends "
                                        f"in {left:.1f}s); it will be retried", retryable=True)
            await asyncio.sleep(min(pause, max(left, 0.001), deadline - now))
            pause = min(pause * 2, 0.5)

    @contextlib.asynccontextmanager
    async def once(self, delivery: Delivery | str, key: KeyFunction | None = None) -> AsyncIterator[Attempt]:
        """Run the block at most once per key: yields a true :class:`Attempt` when the block must run.

        The claim is committed when the block exits normally, released when it raises (a
        cancellation included), and renewed while it runs.
        """
        name = key_of(delivery, key)
        owner = uuid.uuid4().hex
        if not await self.acquire(name, owner):
            yield Attempt(name, False)
            return
        attempt = Attempt(name, True)
        token = _current.set(attempt)
        keeper = asyncio.create_task(self._keep(name, owner))
        try:
            yield attempt
        except BaseException:
            keeper.cancel()
            try:
                await asyncio.shield(self.release(name, owner))
            except Exception as exc:  # the claim then expires after its lease: a delay, not a loss
                log.warning("idempotency: could not release the claim on %r: %s", name, exc)
            raise
        finally:
            _current.reset(token)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if not await self._commit_retrying(name, owner):
            log.warning("idempotency: the claim on %r expired before the handler finished (it took longer than "
                        "the %.1fs lease without renewal); another worker may have processed it too", name, self.lease)

    async def _commit_retrying(self, key: str, owner: str) -> bool:
        """The effect is applied: a commit lost to a blip would let the lease expire and the message
        be processed again, so try a few times before giving up (raising: the runner retries)."""
        for attempt in range(3):
            try:
                return await self.commit(key, owner)
            except Exception as exc:
                if attempt == 2:
                    raise
                log.warning("idempotency: commit of %r failed, retrying: %s", key, exc)
                await asyncio.sleep(0.1 * 2**attempt)
        return False

    async def _keep(self, key: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                if not await self.renew(key, owner):
                    log.warning("idempotency: lost the claim on %r while processing it", key)
                    return
            except Exception as exc:  # the store is unreachable: the next renewal may still work
                log.warning("idempotency: could not renew the claim on %r: %s", key, exc)

    async def close(self) -> None:
        """Release the store's connections (nothing for the in-memory store)."""


@dataclass(slots=True)
class _Entry:
    owner: str | None  # None: done
    expires: float


class MemoryStore(LeaseStore):
    """Claims and processed keys in this process's memory: for tests and single-process consumers.

    Bounded: at most ``max_entries`` processed keys (the oldest are forgotten first).
    """

    def __init__(self, *, lease: timedelta | float = 30.0, remember: timedelta | float = timedelta(hours=1),
                 wait: timedelta | float | None = None, max_entries: int = 1_000_000) -> None:
        super().__init__(lease=lease, remember=remember, wait=wait)
        if max_entries < 1:
            raise ConfigError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: dict[str, _Entry] = {}
        self._done: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        done = self._done
        while done and (done[0][0] <= now or len(done) > self.max_entries):
            expires, key = done.popleft()
            entry = self._entries.get(key)
            if entry is not None and entry.owner is None and entry.expires == expires:
                del self._entries[key]

    async def claim(self, key: str, owner: str) -> tuple[Claim, float]:
        now = time.monotonic()
        self._prune(now)
        entry = self._entries.get(key)
        if entry is not None and entry.expires > now:
            return (Claim.DONE, 0.0) if entry.owner is None else (Claim.BUSY, entry.expires - now)
        self._entries[key] = _Entry(owner, now + self.lease)
        return Claim.CLAIMED, self.lease

    async def renew(self, key: str, owner: str) -> bool:
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None or entry.owner != owner or entry.expires <= now:
            return False
        entry.expires = now + self.lease
        return True

    async def commit(self, key: str, owner: str) -> bool:
        now = time.monotonic()
        entry = self._entries.get(key)
        held = entry is not None and entry.owner == owner and entry.expires > now
        expires = now + self.remember
        self._entries[key] = _Entry(None, expires)
        self._done.append((expires, key))
        self._prune(now)
        return held

    async def release(self, key: str, owner: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.owner == owner:
            del self._entries[key]

    def processed(self, key: str) -> bool:
        """Whether ``key`` is remembered as processed (for tests and diagnostics)."""
        entry = self._entries.get(key)
        return entry is not None and entry.owner is None and entry.expires > time.monotonic()


def idempotent(handler: Handler, store: IdempotencyStore, key: KeyFunction | None = None) -> AsyncHandler:
    """Wrap ``handler(delivery)`` so each key's effect is applied once (what ``consume(idempotency=)`` calls).

    A copy already processed returns without calling ``handler`` (the runner acks it); a handler
    that raises releases the claim (the runner retries as usual); a copy in flight elsewhere waits,
    then raises :class:`InFlightElsewhere` (retried). Settle the delivery by returning or raising,
    not by calling ``nack``/``reject`` inside the handler: a handler that returns counts as processed.
    """
    if not isinstance(store, IdempotencyStore):
        raise ConfigError(f"idempotency= must be a store with once() (MemoryStore, RedisStore, SqlInbox), "
                          f"got {type(store).__name__}")
    if key is not None and not callable(key):
        raise ConfigError(f"idempotency_key= must be a function of the delivery, got {type(key).__name__}")

    async def wrapped(delivery: Delivery) -> Any:
        async with store.once(delivery, key) as attempt:
            if attempt:
                result = handler(delivery)
                if inspect.isawaitable(result):
                    result = await result
                return result
        return None

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    wrapped.__doc__ = getattr(handler, "__doc__", None)
    return wrapped


class SqlInbox:
    """The inbox: processed keys in a SQL table, written in the handler's own database transaction.

    ``once()`` opens a transaction on ``engine`` (a SQLAlchemy 2 ``AsyncEngine``; or, with
    ``sessions=``, an ``async_sessionmaker`` whose session is yielded instead of a connection),
    inserts the key (``consumer``, key) and yields the attempt with ``transaction`` set: the handler
    writes through it, and leaving the block commits the handler's changes and the mark together. A
    failing handler rolls both back. A crashed worker's connection closes and the database aborts its
    transaction: that is the lease. A second worker inserting the same key waits on the first's row
    lock (PostgreSQL), then sees it done or takes over; it waits at most ``wait`` seconds, then raises
    :class:`InFlightElsewhere`. On PostgreSQL ``lease`` also bounds how long a worker may sit idle in
    the transaction (``idle_in_transaction_session_timeout``), so a hung worker loses its claim too.

    SQLite serialises writers: the insert takes the database's write lock until commit, so handlers
    run one at a time across processes; ``wait`` is the SQLite busy timeout there.
    """

    def __init__(self, engine: Any, *, consumer: str = "default", table: str = "unimq_inbox",
                 sessions: Any = None, wait: timedelta | float = 30.0, lease: timedelta | float | None = None) -> None:
        _check_identifier(table, "table")
        self.engine = engine
        self.consumer = consumer
        self.table = table
        self.sessions = sessions
        self.wait = seconds(wait, "wait")
        self.lease = None if lease is None else seconds(lease, "lease", allow_zero=False)

    def ddl(self, dialect: str = "postgresql") -> list[str]:
        """The CREATE statements for ``dialect`` (``postgresql`` or ``sqlite``), for other stacks too."""
        stamp = "TIMESTAMPTZ NOT NULL DEFAULT now()" if dialect == "postgresql" else \
            "TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP"
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} (\n"
            "    consumer     TEXT NOT NULL,\n"
            "    message_key  TEXT NOT NULL,\n"
            f"    processed_at {stamp},\n"
            "    PRIMARY KEY (consumer, message_key)\n)",
            f"CREATE INDEX IF NOT EXISTS {self.table}_processed_at ON {self.table} (processed_at)",
        ]

    async def create_table(self) -> None:
        """Create the inbox table and its index if they do not exist."""
        from sqlalchemy import text

        async with self.engine.begin() as conn:
            for statement in self.ddl(conn.dialect.name):
                await conn.execute(text(statement))

    async def purge(self, older_than: timedelta | float) -> int:
        """Forget keys processed more than ``older_than`` ago (longer than any redelivery); returns the count."""
        from sqlalchemy import text

        age = seconds(older_than, "older_than")
        async with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                sql = (f"DELETE FROM {self.table} WHERE consumer = :c "
                       "AND processed_at < now() - make_interval(secs => :age)")
            else:
                sql = (f"DELETE FROM {self.table} WHERE consumer = :c "
                       "AND processed_at <= datetime('now', '-' || :age || ' seconds')")
            result = await conn.execute(text(sql), {"c": self.consumer, "age": age})
            return int(result.rowcount)

    async def processed(self, key: str) -> bool:
        """Whether ``key`` is marked processed (committed) for this consumer."""
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            row = await conn.execute(text(f"SELECT 1 FROM {self.table} WHERE consumer = :c AND message_key = :k"),
                                     {"c": self.consumer, "k": key})
            return row.first() is not None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        if self.sessions is not None:
            async with self.sessions() as session, session.begin():
                yield session
        else:
            async with self.engine.connect() as conn, conn.begin():
                yield conn

    @contextlib.asynccontextmanager
    async def once(self, delivery: Delivery | str, key: KeyFunction | None = None) -> AsyncIterator[Attempt]:
        """Yields an attempt whose ``transaction`` the block writes through; see the class docs."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        name = key_of(delivery, key)
        async with self._transaction() as tx:
            if self.engine.dialect.name == "postgresql":
                await tx.execute(text(f"SET LOCAL lock_timeout = {int(self.wait * 1000)}"))
                if self.lease is not None:
                    await tx.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {int(self.lease * 1000)}"))
                insert = (f"INSERT INTO {self.table} (consumer, message_key) VALUES (:c, :k) "
                          "ON CONFLICT DO NOTHING")
            else:
                await tx.execute(text(f"PRAGMA busy_timeout = {int(self.wait * 1000)}"))
                insert = f"INSERT OR IGNORE INTO {self.table} (consumer, message_key) VALUES (:c, :k)"
            try:
                result = await tx.execute(text(insert), {"c": self.consumer, "k": name})
            except DBAPIError as exc:
                if _lock_timeout(exc):
                    raise InFlightElsewhere(f"message {name!r} is being processed by another worker (waited "
                                            f"{self.wait:g}s for its transaction); it will be retried") from None
                raise
            attempt = Attempt(name, result.rowcount == 1, tx)
            if not attempt.fresh:
                yield attempt
                return
            token = _current.set(attempt)
            try:
                yield attempt
            finally:
                _current.reset(token)

    async def close(self) -> None:
        """The engine belongs to the application; nothing to release here."""


def _lock_timeout(exc: Exception) -> bool:
    """PostgreSQL's lock_not_available (55P03), or SQLite's "database is locked"."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return code == "55P03" or "database is locked" in str(exc)


def _check_identifier(name: str, field: str) -> None:
    """Table names are put into SQL text: allow only plain (optionally schema-qualified) identifiers."""
    parts = name.split(".")
    if not name or len(parts) > 2 or not all(p.replace("_", "a").isalnum() and not p[0].isdigit() for p in parts):
        raise ConfigError(f"{field} {name!r} must be a plain SQL identifier (letters, digits, _; optional schema.)")
