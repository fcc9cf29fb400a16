"""Patterns on top of any broker, written once: request-reply with a private reply path, routing
subjects with pattern filters per group, and temporary destinations.

- **Request-reply.** Each ``Broker`` that sends a request gets its own reply destination
  (``unimq-reply-<id>``), read by one task that matches replies to waiting requests by
  correlation id. No requester ever sees another's reply, so nothing is nacked back or
  dead-lettered; a reply that comes after its request timed out is acked, dropped and counted
  (``Requester.late``). The reply destination is deleted when the broker closes (and swept by
  ``sweep_temporary`` after a crash). Where the driver has a private reply address of its own
  (``Driver.reply_inbox``: a NATS inbox) replies go there instead, unstored.
- **Routing.** ``send(..., subject="orders.eu.created")`` carries a routing subject (header
  ``x-unimq-subject``); ``consumer(..., subject="orders.*.created", headers={"type": "refund"})``
  gives a group only the matching messages. ``*`` matches one dot-separated token, ``#`` zero or
  more. The core filters on receipt (a message the group does not want is acked for that group
  only), so every backend supports it; the cost is that the group still receives — and drops —
  what it does not want.
- **Temporary destinations.** ``async with broker.temporary() as name:`` makes a destination that
  is deleted on exit; its name carries its creation time so ``Broker.sweep_temporary`` can remove
  those left behind by a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from unimq.errors import ConfigError, Timeout
from unimq.message import Delivery, Message

if TYPE_CHECKING:
    from unimq.broker import Broker, Consumer
    from unimq.driver import Driver

log = logging.getLogger("unimq.patterns")

SUBJECT = "x-unimq-subject"
REPLY_PREFIX = "unimq-reply-"
TEMPORARY_PREFIX = "unimq-tmp-"
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


def check_subject(subject: object, *, pattern: bool) -> str:
    """A routing subject (or, with ``pattern``, a filter with ``*``/``#``); ConfigError naming the fault."""
    if not isinstance(subject, str) or not subject:
        raise ConfigError(f"a routing subject must be a non-empty str, got {subject!r}")
    for token in subject.split("."):
        if pattern and token in ("*", "#"):
            continue
        if not token:
            raise ConfigError(f"routing subject {subject!r} has an empty token (two dots, or a dot at an end)")
        bad = _TOKEN.sub("", token)
        if bad:
            raise ConfigError(f"routing subject {subject!r}: character {bad[0]!r} is not allowed "
                              "(letters, digits, '_', '-', tokens separated by '.'"
                              + (", '*' and '#' as whole tokens)" if pattern else ")"))
    return subject


class Filter:
    """What a group wants: a subject pattern and/or header values (all must match)."""

    __slots__ = ("_headers", "_regex", "pattern")

    def __init__(self, subject: str | None, headers: Mapping[str, str] | None) -> None:
        self.pattern = None if subject is None else check_subject(subject, pattern=True)
        if headers is not None and not (isinstance(headers, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
            raise ConfigError("headers= filter must map str to str")
        self._headers = dict(headers or {})
        self._regex = None if self.pattern is None else re.compile(_to_regex(self.pattern))

    def __call__(self, message: Message) -> bool:
        headers = message.headers
        if self._regex is not None:
            subject = headers.get(SUBJECT)
            if subject is None or self._regex.fullmatch("." + subject) is None:
                return False
        return all(headers.get(k) == v for k, v in self._headers.items())


def _to_regex(pattern: str) -> str:
    """Match against ``"." + subject``: each token is a dot and the token, so ``#`` can match none at all."""
    parts = {"*": r"\.[^.]+", "#": r"(?:\.[^.]+)*"}
    return "".join(parts.get(token, r"\." + re.escape(token)) for token in pattern.split("."))


def temporary_name(prefix: str = TEMPORARY_PREFIX) -> str:
    """``<prefix><epoch seconds>-<random>``: sortable by age, unique, valid on every backend."""
    return f"{prefix}{int(time.time())}-{secrets.token_hex(4)}"


def created_at(name: str) -> int | None:
    for prefix in (TEMPORARY_PREFIX, REPLY_PREFIX):
        if name.startswith(prefix):
            stamp = name[len(prefix):].split("-", 1)[0]
            return int(stamp) if stamp.isdigit() else None
    return None


class Requester:
    """One broker's private reply path: the driver's reply inbox where it has one (NATS), else a
    reply destination and the task that reads it."""

    def __init__(self, broker: Broker, driver: Driver) -> None:
        self._broker = broker
        self._driver = driver
        self.destination = ""
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._consumer: Consumer | None = None
        self._ready: asyncio.Lock = asyncio.Lock()
        #: Replies that arrived after their request gave up (dropped, never dead-lettered).
        self.late = 0

    async def start(self) -> None:
        async with self._ready:
            if self.destination:
                return
            inbox = await self._driver.reply_inbox(self._arrived)
            if inbox is not None:
                self.destination = inbox
                return
            name = temporary_name(REPLY_PREFIX)
            await self._broker.ensure(name, dead_letter=False,
                                      temporary=self._broker.capabilities_for(name).temporary.is_native)
            self._consumer = await self._broker.consumer(name, prefetch=1000).open()
            self._reader = asyncio.create_task(self._read(self._consumer), name=f"unimq {name}")
            self.destination = name

    def _arrived(self, reply: Message) -> None:
        waiting = self._pending.pop(reply.correlation_id or "", None)
        if waiting is not None and not waiting.done():
            waiting.set_result(reply)
        else:
            self.late += 1
            log.debug("late or unknown reply %s on %s dropped", reply.message_id, self.destination)

    async def _read(self, consumer: Consumer) -> None:
        async for delivery in consumer:
            self._arrived(delivery.message)
            await delivery.ack()

    async def request(self, destination: str, message: Message, timeout: float) -> Message:
        await self.start()
        message.reply_to = self.destination
        message.correlation_id = message.message_id
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[message.message_id] = future
        try:
            await self._broker.producer(destination).send(message)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise Timeout(f"no reply to {message.message_id} from {destination!r} within {timeout:g}s") from None
        finally:
            self._pending.pop(message.message_id, None)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.close()
            with contextlib.suppress(Exception):
                await self._broker.delete(self.destination)


def reply_message(request: Delivery, body: bytes, fields: dict[str, Any]) -> tuple[str, Message]:
    """Where a reply to ``request`` goes, and the reply: correlated with the request."""
    reply_to = request.message.reply_to
    if not reply_to:
        raise ConfigError(f"message {request.message.message_id} has no reply_to: nothing to reply to")
    correlation = request.message.correlation_id or request.message.message_id
    return reply_to, Message(body, fields.pop("key", None), dict(fields.pop("headers", None) or {}),
                             correlation_id=correlation, **fields)
