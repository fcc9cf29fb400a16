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
        headers[NOT_BEFORE] = str(int((time.time() + delay) * 1000))
    else:
        headers.pop(NOT_BEFORE, None)
    return replace(message, headers=headers, delay=None)


def seconds_until_due(message: Message) -> float:
    """Seconds until an emulated delay is over (0 if none or past)."""
    due = message.headers.get(NOT_BEFORE)
    if not due:
        return 0.0
    try:
        return max(0.0, int(due) / 1000 - time.time())
    except ValueError:
        return 0.0


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
