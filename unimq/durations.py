"""Durations at the edge of the API: float seconds or ``timedelta``, checked once when given.

Every public parameter that is a duration (``send(delay=, ttl=)``, ``nack(delay=)``, ``extend()``,
``receive(timeout=)``, ``Retry(...)``, ``lock_timeout``, ``ensure(...)``) goes through
:func:`seconds`, so a negative, NaN or infinite value is a :class:`ConfigError` naming the field
instead of a message that never comes back or a wait that never ends.
"""

from __future__ import annotations

import math
from datetime import timedelta

from unimq.errors import ConfigError

Duration = float | int | timedelta


def seconds(value: object, field: str, *, allow_zero: bool = True) -> float:
    """``value`` in seconds; ConfigError naming ``field`` if it is not a finite, non-negative duration."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        raise ConfigError(f"{field} must be seconds (a number) or a timedelta, got {type(value).__name__}")
    if math.isnan(result) or math.isinf(result):
        raise ConfigError(f"{field} must be a finite duration, got {result}")
    if result < 0 or (result == 0 and not allow_zero):
        raise ConfigError(f"{field} must be {'>= 0' if allow_zero else '> 0'} seconds, got {result:g}")
    return result


def optional_seconds(value: object, field: str, *, allow_zero: bool = True) -> float | None:
    """Like :func:`seconds`, with ``None`` passed through (meaning: no limit / the default)."""
    return None if value is None else seconds(value, field, allow_zero=allow_zero)


def as_timedelta(value: object, field: str, *, allow_zero: bool = True) -> timedelta:
    """A validated duration as ``timedelta`` (what :class:`~unimq.message.Message` stores)."""
    if isinstance(value, timedelta):
        seconds(value, field, allow_zero=allow_zero)
        return value
    return timedelta(seconds=seconds(value, field, allow_zero=allow_zero))
