"""Portable reliability: retry with backoff and jitter, reserved headers, dead-letter copies,
and a bounded de-duplication window. Written once here, used by every adapter.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import timedelta

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
ORIGIN = "x-unimq-origin"


@dataclass(frozen=True)
class Retry:
    """How the handler runner and the producer retry: exponential backoff with full jitter.

    ``backoff(n)`` is the wait after the n-th failed attempt: a uniform draw in
    ``[0, min(max_delay, initial * multiplier**(n-1))]`` (AWS's "full jitter"), so retries of many
    consumers spread out instead of arriving together.
    """

    max_attempts: int = 5
    initial: timedelta = timedelta(milliseconds=200)
    max_delay: timedelta = timedelta(seconds=30)
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("Retry.max_attempts must be >= 1")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number ``attempt`` (1-based), in seconds."""
        raw = self.initial.total_seconds() * self.multiplier ** max(0, attempt - 1)
        return min(self.max_delay.total_seconds(), raw)

    def backoff(self, attempt: int) -> float:
        ceiling = self.ceiling(attempt)
        return random.uniform(0, ceiling) if self.jitter else ceiling


def dead_letter_copy(message: Message, reason: str, source: str, group: str | None) -> Message:
    """The message as it goes to a dead-letter destination: same id and body, reason in headers."""
    headers = dict(message.headers)
    headers[DEAD_LETTER_REASON] = reason[:1024]
    headers[DEAD_LETTER_SOURCE] = source
    if group:
        headers[DEAD_LETTER_GROUP] = group
    return replace(message, headers=headers, delay=None, ttl=None)


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
