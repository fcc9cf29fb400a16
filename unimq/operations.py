"""Operating queues, once for every backend: read dead letters, redrive them, purge, check health.

Everything here is built on the portable consumer and producer, so it works wherever the
capabilities allow (``dead_letter`` for the dead-letter operations), and keeps the at-least-once
promise: a redrive copies a message back to its source, waits until the broker accepted the copy,
and only then removes the dead letter — a crash in between leaves a duplicate (same
``message_id``), never a loss, and running the redrive again resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from unimq import durations
from unimq.errors import CapabilityError, ConfigError, NotFound, UnimqError
from unimq.message import Delivery, Message
from unimq.reliability import (
    DEAD_LETTER_ATTEMPT,
    DEAD_LETTER_GROUP,
    DEAD_LETTER_REASON,
    DEAD_LETTER_SOURCE,
    DEAD_LETTER_TIME,
    redrive_copy,
)

if TYPE_CHECKING:
    from unimq.broker import Broker

#: How long a read of a dead-letter destination waits for the next message before it is done; the
#: first wait is longer, because opening a reader can take that long (a Service Bus session accept).
IDLE = 0.5
FIRST = 3.0


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message and what is known of why: reason, source, group, attempt and time."""

    message: Message
    reason: str | None
    source: str | None
    group: str | None
    attempt: int | None
    time: datetime | None

    @classmethod
    def of(cls, message: Message) -> DeadLetter:
        headers = message.headers
        stamp = _int(headers.get(DEAD_LETTER_TIME))
        return cls(message, headers.get(DEAD_LETTER_REASON), headers.get(DEAD_LETTER_SOURCE),
                   headers.get(DEAD_LETTER_GROUP), _int(headers.get(DEAD_LETTER_ATTEMPT)),
                   datetime.fromtimestamp(stamp / 1000, UTC) if stamp else None)


@dataclass
class RedriveReport:
    """What a redrive did: moved back, left in place (filtered out), and failed (still dead-lettered)."""

    moved: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Health:
    """Whether the broker answered, and how fast."""

    ok: bool
    backend: str
    url: str
    rtt_ms: float | None
    error: str | None = None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _check_count(value: object, field: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{field} must be an int >= 1, got {value!r}")


def _check_group(group: object) -> None:
    if group is not None and (not isinstance(group, str) or not group):
        raise ConfigError(f"group must be a non-empty str or None (every group), got {group!r}")


def _dead_lettering(broker: Broker, destination: str) -> str:
    caps = broker.capabilities_for(destination)
    if not caps.dead_letter:
        raise CapabilityError.unsupported(caps.backend, "dead-letter operations", "dead_letter",
                                          "Nothing is ever dead-lettered on this backend.")
    return broker.dead_letter_destination(destination)


async def dead_letters(broker: Broker, destination: str, group: str | None = None,
                       count: int = 10) -> list[DeadLetter]:
    """Up to ``count`` dead letters of ``destination`` (of ``group`` only, if given), left in place.

    Peeked where the dead-letter destination can be peeked; elsewhere received and released again
    at once (their order may change; nothing is consumed)."""
    _check_count(count, "count")
    _check_group(group)
    dlq = _dead_lettering(broker, destination)
    wanted = (lambda d: d.group == group) if group else (lambda d: True)
    if broker.capabilities_for(dlq).peek:
        peeked = await broker.peek(dlq, count if not group else max(count * 10, 100))
        return [d for d in map(DeadLetter.of, peeked) if wanted(d)][:count]
    held: list[Delivery] = []
    out: list[DeadLetter] = []
    async with broker.consumer(dlq, prefetch=max(count, 10)) as consumer:
        try:
            while len(out) < count:
                delivery = await consumer.receive(timeout=IDLE if held else FIRST)
                if delivery is None:
                    break
                held.append(delivery)
                letter = DeadLetter.of(delivery.message)
                if wanted(letter):
                    out.append(letter)
        finally:
            for delivery in held:
                await delivery.nack()
    return out


async def redrive(
    broker: Broker,
    destination: str,
    *,
    group: str | None = None,
    filter: Callable[[DeadLetter], bool] | None = None,
    limit: int | None = None,
    rate: float | None = None,
) -> RedriveReport:
    """Move dead letters of ``destination`` back to it: copy → confirm → remove, one at a time.

    ``group``/``filter`` choose which; ``limit`` caps how many move; ``rate`` caps messages per
    second. Those not chosen stay dead-lettered. On a fan-out destination the copy reaches every
    group again (the broker cannot address one group's queue portably); an idempotent consumer
    (``consume(idempotency=...)``) drops it where it was already processed.
    """
    _check_count(limit, "limit", allow_none=True)
    _check_group(group)
    pause = 0.0 if rate is None else 1.0 / durations.seconds(rate, "rate", allow_zero=False)
    dlq = _dead_lettering(broker, destination)
    report = RedriveReport()
    producer = broker.producer(destination)
    kept: list[Delivery] = []
    seen: set[str] = set()
    async with broker.consumer(dlq) as consumer:
        try:
            while limit is None or report.moved < limit:
                delivery = await consumer.receive(timeout=IDLE if seen else FIRST)
                if delivery is None or delivery.message.message_id in seen:
                    if delivery is not None:
                        kept.append(delivery)
                    break
                seen.add(delivery.message.message_id)
                letter = DeadLetter.of(delivery.message)
                if (group and letter.group != group) or (filter is not None and not filter(letter)):
                    report.skipped += 1
                    kept.append(delivery)
                    continue
                try:
                    await producer.send(redrive_copy(delivery.message))
                except UnimqError as exc:
                    report.failed += 1
                    report.errors.append(f"{delivery.message.message_id}: {exc}")
                    kept.append(delivery)
                    continue
                await consumer.ack_many([delivery])
                report.moved += 1
                if pause:
                    await asyncio.sleep(pause)
        finally:
            for delivery in kept:
                await delivery.nack()
    return report


async def purge(broker: Broker, destination: str, group: str | None = None, *,
                dead_letters: bool = False) -> int:
    """Remove every waiting message of ``destination`` (for ``group``), or of its dead-letter
    destination with ``dead_letters=True``; return how many. Messages held by running consumers
    are not touched (they come back if not acked)."""
    _check_group(group)
    target = _dead_lettering(broker, destination) if dead_letters else destination
    removed = 0
    async with broker.consumer(target, None if dead_letters else group, prefetch=500) as consumer:
        while batch := await consumer.receive_batch(500, timeout=IDLE if removed else FIRST):
            await consumer.ack_many(batch)
            removed += len(batch)
    return removed


async def health(broker: Broker, timeout: float = 5.0) -> Health:
    """Ask the broker something cheap and time the answer; a broker that answers ``NotFound``
    answered. Never raises for an unhealthy broker: ``ok`` says so."""
    seconds = durations.seconds(timeout, "timeout", allow_zero=False)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            await broker.stats(f"__unimq_health_{int(started * 1000) % 1000}")
    except NotFound:
        pass
    except (UnimqError, TimeoutError, OSError) as exc:
        return Health(False, broker.backend, broker.url, None, f"{type(exc).__name__}: {exc}")
    return Health(True, broker.backend, broker.url, (time.perf_counter() - started) * 1000)
