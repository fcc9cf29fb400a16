"""Portable reliability: retry with backoff and jitter, reserved headers, dead-letter copies,
and a bounded de-duplication window. Written once here, used by every adapter.
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta

from pydantic import ValidationError

from unimq.durations import seconds
from unimq.errors import ConfigError
from unimq.message import Message

#: Headers unimq reserves for its emulations. Applications must not set them.
HEADER_PREFIX = "x-unimq-"
ATTEMPT = "x-unimq-attempt"
NOT_BEFORE = "x-unimq-not-before"
#: Emulated TTL: the epoch-milliseconds time after which unimq consumers drop the message.
EXPIRES_AT = "x-unimq-expires-at"
DEAD_LETTER_REASON = "x-unimq-dead-letter-reason"
DEAD_LETTER_SOURCE = "x-unimq-dead-letter-source"
DEAD_LETTER_GROUP = "x-unimq-dead-letter-group"
DEAD_LETTER_TIME = "x-unimq-dead-letter-time"
DEAD_LETTER_ATTEMPT = "x-unimq-dead-letter-attempt"
REDRIVE = "x-unimq-redrive"
ORIGIN = "x-unimq-origin"


#: ``Retry(give_up_on=...)``/``retry_on=``: exception types, or a predicate on the exception.
ExceptionFilter = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class Retry:
    """How the handler runner and the producer retry: exponential backoff with full jitter.

    ``backoff(n)`` is the wait after the n-th failed attempt: a uniform draw in
    ``[0, min(max_delay, initial * multiplier**(n-1))]`` (AWS's "full jitter"), so retries of many
    consumers spread out instead of arriving together. Durations are float seconds or ``timedelta``.

    The handler runner also reads: ``immediate`` (re-runs of a failed handler in place, before the
    message goes back to the broker with a delay, as NServiceBus's immediate retries), and which
    failures are permanent, dead-lettered on the first failure: ``give_up_on`` (exception types, or
    a predicate taking the exception) and, the other way round, ``retry_on`` (only these are retried).
    """

    max_attempts: int = 5
    initial: timedelta | float = timedelta(milliseconds=200)
    max_delay: timedelta | float = timedelta(seconds=30)
    multiplier: float = 2.0
    jitter: bool = True
    immediate: int = 0
    give_up_on: ExceptionFilter | None = None
    retry_on: ExceptionFilter | None = None
    _initial: float = field(init=False, repr=False, compare=False, default=0.0)
    _max_delay: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        for name in ("max_attempts", "immediate"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "max_attempts" else 0):
                raise ConfigError(f"Retry.{name} must be an integer >= {1 if name == 'max_attempts' else 0}, "
                                  f"got {value!r}")
        # Stored as seconds: the hot path (backoff) then does no conversion.
        object.__setattr__(self, "_initial", seconds(self.initial, "Retry.initial"))
        object.__setattr__(self, "_max_delay", seconds(self.max_delay, "Retry.max_delay"))
        multiplier = self.multiplier
        if (not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool)
                or not math.isfinite(multiplier) or multiplier < 1):
            raise ConfigError(f"Retry.multiplier must be a finite number >= 1, got {multiplier!r}")
        for name in ("give_up_on", "retry_on"):
            _check_filter(getattr(self, name), f"Retry.{name}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number ``attempt`` (1-based), in seconds."""
        try:
            raw = self._initial * self.multiplier ** max(0, attempt - 1)
        except OverflowError:  # a large attempt number: the cap applies
            return self._max_delay
        return min(self._max_delay, raw)

    def backoff(self, attempt: int) -> float:
        ceiling = self.ceiling(attempt)
        return random.uniform(0, ceiling) if self.jitter else ceiling

    def is_permanent(self, exc: BaseException) -> bool:
        """Whether ``exc`` can never succeed on retry. A predicate that raises propagates its error."""
        if self.give_up_on is not None and _matches(self.give_up_on, exc):
            return True
        if self.retry_on is not None:
            return not _matches(self.retry_on, exc)
        return isinstance(exc, ValidationError)


def _check_filter(value: object, name: str) -> None:
    if value is None:
        return
    types = value if isinstance(value, tuple) else (value,)
    if all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        return
    if not isinstance(value, (tuple, type)) and callable(value):
        return
    raise ConfigError(f"{name} must be an exception type, a tuple of them, or a predicate "
                      f"(exception -> bool), got {value!r}")


def _matches(rule: ExceptionFilter, exc: BaseException) -> bool:
    if isinstance(rule, (type, tuple)):
        return isinstance(exc, rule)
    return bool(rule(exc))


def dead_letter_copy(message: Message, reason: str, source: str, group: str | None, attempt: int = 0) -> Message:
    """The message as it goes to a dead-letter destination: same id and body; why, from where, after
    how many attempts and when, in headers (read back by ``Broker.dead_letters``)."""
    headers = dict(message.headers)
    headers[DEAD_LETTER_REASON] = reason[:1024]
    headers[DEAD_LETTER_SOURCE] = source
    headers[DEAD_LETTER_TIME] = str(epoch_ms_after(0))
    if attempt:
        headers[DEAD_LETTER_ATTEMPT] = str(attempt)
    if group:
        headers[DEAD_LETTER_GROUP] = group
    return replace(message, headers=headers, delay=None, ttl=None)


def redrive_copy(message: Message) -> Message:
    """A dead-lettered message as it goes back to its source: same id, body and key; the
    dead-letter and attempt headers removed, so it starts again at attempt 1. ``x-unimq-redrive``
    (the time it was dead-lettered) gives the copy its own de-duplication key (:func:`dedup_key`):
    a broker that de-duplicates by message id would otherwise drop it as the message it already saw,
    while a redrive run twice after a crash still sends the same key."""
    headers = {k: v for k, v in message.headers.items() if k not in _REDRIVE_DROPS}
    headers[REDRIVE] = message.headers.get(DEAD_LETTER_TIME) or str(epoch_ms_after(0))
    return replace(message, headers=headers, delay=None, ttl=None)


def dedup_key(message: Message) -> str:
    """What de-duplication compares: the message id, or for a redriven copy the id and its redrive stamp."""
    stamp = message.headers.get(REDRIVE) if message.headers else None
    return message.message_id if stamp is None else f"{message.message_id}~{stamp}"


_REDRIVE_DROPS = frozenset({ATTEMPT, NOT_BEFORE, DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, DEAD_LETTER_GROUP,
                            DEAD_LETTER_TIME, DEAD_LETTER_ATTEMPT})


def redelivery_copy(message: Message, attempt: int, delay: float | None) -> Message:
    """The message as an emulated redelivery republishes it: next attempt and not-before time."""
    headers = dict(message.headers)
    headers[ATTEMPT] = str(attempt)
    if delay:
        headers[NOT_BEFORE] = str(epoch_ms_after(delay))
    else:
        headers.pop(NOT_BEFORE, None)
    return replace(message, headers=headers, delay=None)


def epoch_ms_after(seconds: float) -> int:
    """Epoch milliseconds ``seconds`` from now: how emulated delays and TTLs are stamped."""
    return int((time.time() + seconds) * 1000)


def epoch_ms(headers: dict[str, str] | None, name: str) -> int:
    """The epoch-milliseconds header ``name`` (``NOT_BEFORE``, ``EXPIRES_AT``); 0 if absent or malformed."""
    raw = headers.get(name) if headers else None
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        return 0


def seconds_until(headers: dict[str, str] | None, name: str) -> float:
    """Seconds until the time in header ``name`` (negative if past, inf if absent)."""
    stamp = epoch_ms(headers, name)
    return stamp / 1000 - time.time() if stamp else float("inf")


def seconds_until_due(message: Message) -> float:
    """Seconds until an emulated delay is over (0 if none or past)."""
    due = epoch_ms(message.headers, NOT_BEFORE)
    return max(0.0, due / 1000 - time.time()) if due else 0.0


def attempt_from_headers(message: Message, native_count: int = 1) -> int:
    """The delivery attempt: the emulated count in the headers plus the broker's own count."""
    try:
        base = int(message.headers.get(ATTEMPT, "1"))
    except ValueError:
        base = 1
    return base + native_count - 1


class DedupWindow:
    """Remembers message ids for ``window`` seconds, at most ``max_entries`` of them.

    ``seen(id)`` is True for an id already seen in the window. Memory stays bounded: the oldest
    ids are forgotten first, by age or by count.
    """

    def __init__(self, window: float, max_entries: int = 1_000_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._ids: OrderedDict[str, float] = OrderedDict()

    def seen(self, message_id: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        ids = self._ids
        horizon = now - self.window
        while ids and next(iter(ids.values())) < horizon:
            ids.popitem(last=False)
        if message_id in ids:
            return True
        if len(ids) >= self.max_entries:
            ids.popitem(last=False)
        ids[message_id] = now
        return False

    def __contains__(self, message_id: object) -> bool:
        stamp = self._ids.get(message_id) if isinstance(message_id, str) else None
        return stamp is not None and stamp >= time.monotonic() - self.window

    def __len__(self) -> int:
        return len(self._ids)
