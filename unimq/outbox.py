"""The transactional outbox: a message is written in the same database transaction as the business
change, and a relay publishes it afterwards.

    await outbox.send(conn, "orders", Message(b"...", key="order-42"))  # inside the app's transaction

commits or rolls back with the caller's changes, so a rolled-back transaction never sends and a
committed one always does. A :class:`Relay` (``outbox.relay(broker)`` in a task, or the process
``unimq outbox relay DB_URL BROKER_URL``) reads unsent rows in id order, publishes them, and marks
them sent. It is at-least-once: a relay that dies after publishing and before marking republishes
on restart, with the same ``message_id``, so an idempotent consumer (:mod:`unimq.idempotency`)
applies the effect once. Several relays may compete on PostgreSQL (``FOR UPDATE SKIP LOCKED``,
and a key's rows are taken only from its oldest unsent one, so order per key holds); on SQLite
run one relay. The DDL is :meth:`Outbox.ddl`; ``docs/exactly-once.md`` shows it.

Needs the ``unimq[outbox]`` extra (SQLAlchemy 2 async, asyncpg, aiosqlite).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from unimq.broker import Broker, Producer
from unimq.capabilities import check_message
from unimq.durations import seconds
from unimq.errors import CapabilityError, ConfigError, MessageTooLarge, PublishError, UnimqError
from unimq.idempotency import _check_identifier
from unimq.message import Message

log = logging.getLogger("unimq.outbox")

#: Publish failures that are the message's own fault: retrying cannot help, so the row is marked failed.
#: Any other failure (broker down, closed, missing destination, refused credentials) is retried.
_NEVER = (MessageTooLarge, CapabilityError, ConfigError)
_COLUMNS = ("id, destination, message_key, message_id, body, headers, correlation_id, reply_to, content_type, "
            "delay_ms, ttl_ms, priority")


@dataclass
class RelayStats:
    """What a relay did: messages published and marked, batches, failures (retried), dead rows."""

    relayed: int = 0
    batches: int = 0
    failures: int = 0
    dead: int = 0


class Outbox:
    """An outbox table (default ``unimq_outbox``) in the database of ``engine`` (an ``AsyncEngine``).

    ``engine`` is needed by the relay and the helpers, not by :meth:`send`, which writes through
    the caller's connection or session.
    """

    def __init__(self, engine: Any = None, *, table: str = "unimq_outbox") -> None:
        _check_identifier(table, "table")
        self.engine = engine
        self.table = table

    def ddl(self, dialect: str = "postgresql") -> list[str]:
        """The CREATE statements for ``dialect`` (``postgresql`` or ``sqlite``)."""
        if dialect == "postgresql":
            ident, blob, stamp, now = "BIGSERIAL PRIMARY KEY", "BYTEA", "TIMESTAMPTZ", "now()"
        else:
            ident, blob, stamp, now = "INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "TIMESTAMP", "CURRENT_TIMESTAMP"
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} (\n"
            f"    id             {ident},\n"
            "    destination    TEXT NOT NULL,\n"
            "    message_key    TEXT,\n"
            "    message_id     TEXT NOT NULL,\n"
            f"    body           {blob} NOT NULL,\n"
            "    headers        TEXT,\n"
            "    correlation_id TEXT,\n"
            "    reply_to       TEXT,\n"
            "    content_type   TEXT,\n"
            "    delay_ms       BIGINT,\n"
            "    ttl_ms         BIGINT,\n"
            "    priority       INTEGER,\n"
            f"    created_at     {stamp} NOT NULL DEFAULT {now},\n"
            "    attempts       INTEGER NOT NULL DEFAULT 0,\n"
            "    last_error     TEXT,\n"
            f"    sent_at        {stamp},\n"
            f"    failed_at      {stamp}\n)",
            f"CREATE INDEX IF NOT EXISTS {self.table}_unsent ON {self.table} (id) "
            "WHERE sent_at IS NULL AND failed_at IS NULL",
            f"CREATE INDEX IF NOT EXISTS {self.table}_unsent_key ON {self.table} (message_key, id) "
            "WHERE sent_at IS NULL AND failed_at IS NULL",
        ]

    def _engine(self) -> Any:
        if self.engine is None:
            raise ConfigError("this Outbox has no engine: pass Outbox(engine) to relay or to manage the table")
        return self.engine

    async def create_table(self) -> None:
        """Create the outbox table and its indexes if they do not exist."""
        from sqlalchemy import text

        async with self._engine().begin() as conn:
            for statement in self.ddl(conn.dialect.name):
                await conn.execute(text(statement))

    async def send(self, transaction: Any, destination: str, message: Message | bytes, *,
                   key: str | None = None, headers: dict[str, str] | None = None) -> Message:
        """Write ``message`` for ``destination`` through ``transaction`` (an ``AsyncConnection`` or
        ``AsyncSession`` in the caller's transaction). Returns the Message, with its ``message_id``.

        It is sent when the caller commits; an error here propagates, so the caller's transaction
        rolls back with it.
        """
        from sqlalchemy import text

        if not isinstance(destination, str) or not destination:
            raise ConfigError(f"outbox destination must be a non-empty str, got {destination!r}")
        if isinstance(message, (bytes, bytearray)):
            message = Message(bytes(message), key=key, headers=dict(headers or {}))
        elif not isinstance(message, Message):
            raise ConfigError(f"outbox.send needs a Message or bytes, got {type(message).__name__}")
        elif key is not None or headers:
            raise ConfigError("pass key= and headers= only with a bytes body; set them on the Message instead")
        if not isinstance(message.body, (bytes, bytearray)):
            raise ConfigError(f"outbox message body must be bytes, got {type(message.body).__name__}")
        if not message.message_id:
            raise ConfigError("outbox messages need a message_id (consumers de-duplicate the relay's resends by it)")
        await transaction.execute(text(
            f"INSERT INTO {self.table} (destination, message_key, message_id, body, headers, correlation_id, "
            "reply_to, content_type, delay_ms, ttl_ms, priority) VALUES (:destination, :key, :id, :body, :headers, "
            ":correlation_id, :reply_to, :content_type, :delay_ms, :ttl_ms, :priority)"), {
            "destination": destination, "key": message.key, "id": message.message_id, "body": bytes(message.body),
            "headers": json.dumps(message.headers) if message.headers else None,
            "correlation_id": message.correlation_id, "reply_to": message.reply_to,
            "content_type": message.content_type, "delay_ms": _ms(message.delay), "ttl_ms": _ms(message.ttl),
            "priority": message.priority,
        })
        return message

    async def pending(self) -> int:
        """How many rows are waiting to be relayed."""
        from sqlalchemy import text

        async with self._engine().connect() as conn:
            result = await conn.execute(text(
                f"SELECT count(*) FROM {self.table} WHERE sent_at IS NULL AND failed_at IS NULL"))
            return int(result.scalar_one())

    async def purge(self, older_than: timedelta | float) -> int:
        """Delete rows sent more than ``older_than`` ago; returns how many."""
        from sqlalchemy import text

        age = seconds(older_than, "older_than")
        async with self._engine().begin() as conn:
            if conn.dialect.name == "postgresql":
                cutoff = "now() - make_interval(secs => :age)"
            else:
                cutoff = "datetime('now', '-' || :age || ' seconds')"
            result = await conn.execute(text(
                f"DELETE FROM {self.table} WHERE sent_at IS NOT NULL AND sent_at <= {cutoff}"), {"age": age})
            return int(result.rowcount)

    def relay(self, broker: Broker, *, batch: int = 200, poll: timedelta | float = 0.2,
              max_backoff: timedelta | float = 5.0) -> Relay:
        """A relay from this outbox to ``broker``; ``await relay.run()`` or ``async with relay:``."""
        return Relay(self, broker, batch=batch, poll=poll, max_backoff=max_backoff)


def _ms(value: timedelta | None) -> int | None:
    return None if value is None else int(value.total_seconds() * 1000)


@dataclass
class _Row:
    id: int
    destination: str
    message: Message


class Relay:
    """Publishes an outbox's unsent rows in id order and marks them sent; see the module docs.

    A failed publish that may succeed later (the broker is down) is retried with backoff, keeping
    order; one that cannot (``MessageTooLarge``, ``CapabilityError``, ``ConfigError``) marks the row failed
    (``failed_at``, ``last_error``) and logs an error. A database that is down is waited for too.
    """

    def __init__(self, outbox: Outbox, broker: Broker, *, batch: int = 200, poll: timedelta | float = 0.2,
                 max_backoff: timedelta | float = 5.0) -> None:
        if batch < 1:
            raise ConfigError(f"relay batch must be >= 1, got {batch}")
        self.outbox = outbox
        self.broker = broker
        self.batch = batch
        self.poll = seconds(poll, "poll", allow_zero=False)
        self.max_backoff = seconds(max_backoff, "max_backoff", allow_zero=False)
        self.stats = RelayStats()
        self._producers: dict[str, Producer] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event | None = None, *, until_idle: bool = False) -> None:
        """Relay until ``stop`` is set or the task is cancelled (or, ``until_idle``, nothing is left)."""
        stop = stop or self._stop
        backoff = self.poll
        while not stop.is_set():
            try:
                moved = await self.relay_once()
            except (UnimqError, OSError, TimeoutError) as exc:
                moved = -1
                self._failed(exc)
            except Exception as exc:
                if not _database_error(exc):
                    raise
                moved = -1
                self._failed(exc)
            if moved > 0:
                backoff = self.poll
                continue
            if moved == 0 and until_idle:
                return
            if moved < 0:
                backoff = min(backoff * 2, self.max_backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff if moved < 0 else self.poll)

    def _failed(self, exc: BaseException) -> None:
        self.stats.failures += 1
        log.warning("outbox relay: %s: %s; retrying", type(exc).__name__, exc)

    async def drain(self) -> int:
        """Relay everything unsent now (failures retried); returns how many were published."""
        before = self.stats.relayed
        await self.run(asyncio.Event(), until_idle=True)
        return self.stats.relayed - before

    async def __aenter__(self) -> Relay:
        self._stop.clear()
        self._task = asyncio.create_task(self.run(self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def relay_once(self) -> int:
        """One batch: lock, publish, mark. Returns how many rows were published; raises on failure."""
        engine = self.outbox._engine()
        if engine.dialect.name == "postgresql":
            async with engine.connect() as conn, conn.begin():
                rows = await self._fetch(conn, lock=True)
                count, error = await self._publish_and_mark(conn, rows)
        else:  # SQLite: one relay; hold the write lock only for the short read and the short update
            async with engine.connect() as conn:
                async with conn.begin():
                    rows = await self._fetch(conn, lock=False)
                async with conn.begin():
                    count, error = await self._publish_and_mark(conn, rows)
        if error is not None:  # raised after the commit, so the rows that did go out stay marked
            raise error
        return count

    async def _fetch(self, conn: Any, lock: bool) -> list[_Row]:
        from sqlalchemy import bindparam, text

        table = self.outbox.table
        unsent = "sent_at IS NULL AND failed_at IS NULL"
        locking = " FOR UPDATE SKIP LOCKED" if lock else ""
        result = await conn.execute(text(
            f"SELECT {_COLUMNS} FROM {table} WHERE {unsent} ORDER BY id LIMIT :n{locking}"), {"n": self.batch})
        rows = [_row(r) for r in result.all()]
        keys = sorted({r.message.key for r in rows if r.message.key is not None})
        if not lock or not keys:
            return rows
        # Another relay may hold (locked, so skipped here) an older unsent row of a key we took:
        # publish a key's rows only up to the first one that is not ours.
        ours = {r.id for r in rows}
        older = await conn.execute(text(
            f"SELECT id, message_key FROM {table} WHERE {unsent} AND message_key IN :keys AND id <= :top "
            "ORDER BY id").bindparams(bindparam("keys", expanding=True)), {"keys": keys, "top": rows[-1].id})
        foreign: dict[str, int] = {}
        for row_id, key in older.all():
            if row_id not in ours:
                foreign.setdefault(key, row_id)
        return [r for r in rows if r.message.key is None or r.id < foreign.get(r.message.key, r.id + 1)]

    async def _publish_and_mark(self, conn: Any, rows: list[_Row]) -> tuple[int, UnimqError | None]:
        """Publish per destination in id order; mark what went out. Returns (published, retryable error)."""
        if not rows:
            return 0, None
        sent: list[int] = []
        dead: list[tuple[int, str]] = []
        error: UnimqError | None = None
        stopped_keys: set[tuple[str, str | None]] = set()
        for destination, rows_of_destination in _by_destination(rows):
            producer = self._producers.get(destination)
            if producer is None:
                producer = self._producers[destination] = self.broker.producer(destination)
            caps = self.broker.capabilities_for(destination)
            group: list[_Row] = []
            for row in rows_of_destination:  # checked one by one: one bad message must not fail its batch
                try:
                    check_message(caps, row.message)
                except _NEVER as exc:
                    dead.append((row.id, f"{type(exc).__name__}: {exc}"))
                    continue
                group.append(row)
            if not group:
                continue
            try:
                await producer.send_many([r.message for r in group])
                sent += [r.id for r in group]
            except UnimqError as exc:
                results: Sequence[BaseException | None] = [exc] * len(group)
                per_message = isinstance(exc, PublishError) and len(exc.results) == len(group)
                if isinstance(exc, PublishError) and per_message:
                    results = exc.results
                for row, result in zip(group, results, strict=True):
                    scope = (destination, row.message.key)
                    if result is None and scope not in stopped_keys:
                        sent.append(row.id)
                    elif per_message and isinstance(result, _NEVER) and scope not in stopped_keys:
                        dead.append((row.id, f"{type(result).__name__}: {result}"))
                    elif result is not None:
                        stopped_keys.add(scope)  # keep order: nothing after a retryable failure of the key
                        if error is None:
                            error = result if isinstance(result, UnimqError) else exc
        await self._mark(conn, sent, dead)
        self.stats.relayed += len(sent)
        self.stats.dead += len(dead)
        self.stats.batches += 1
        return len(sent), error

    async def _mark(self, conn: Any, sent: list[int], dead: list[tuple[int, str]]) -> None:
        from sqlalchemy import bindparam, text

        table = self.outbox.table
        now = "now()" if conn.dialect.name == "postgresql" else "CURRENT_TIMESTAMP"
        if sent:
            await conn.execute(text(
                f"UPDATE {table} SET sent_at = {now}, attempts = attempts + 1 WHERE id IN :ids").bindparams(
                bindparam("ids", expanding=True)), {"ids": sent})
        for row_id, reason in dead:
            log.error("outbox relay: row %d can never be published, marked failed: %s", row_id, reason)
            await conn.execute(text(
                f"UPDATE {table} SET failed_at = {now}, attempts = attempts + 1, last_error = :e WHERE id = :id"),
                {"e": reason[:2000], "id": row_id})


def _by_destination(rows: list[_Row]) -> list[tuple[str, list[_Row]]]:
    groups: dict[str, list[_Row]] = {}
    for row in rows:
        groups.setdefault(row.destination, []).append(row)
    return list(groups.items())


def _row(r: Any) -> _Row:
    (row_id, destination, key, message_id, body, headers, correlation_id, reply_to, content_type,
     delay_ms, ttl_ms, priority) = r
    message = Message(
        bytes(body), key, json.loads(headers) if headers else {}, message_id, correlation_id, reply_to,
        content_type, None, None if delay_ms is None else timedelta(milliseconds=delay_ms),
        None if ttl_ms is None else timedelta(milliseconds=ttl_ms), priority,
    )
    return _Row(int(row_id), destination, message)


def _database_error(exc: BaseException) -> bool:
    """A database that is down or restarting (SQLAlchemy's DBAPIError, asyncpg's connection errors)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError

    return isinstance(exc, (DBAPIError, InterfaceError, ConnectionError))
