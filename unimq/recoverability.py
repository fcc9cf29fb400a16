"""Recoverability for the handler runner: permanent failures, handler timeouts and a kill switch.

The runner's decision for a failed handler, in order (see docs/recoverability.md):

1. the kill switch is tripped (or probing) → nack; the failure does not count toward dead-lettering;
2. :class:`Reject`, or an exception ``Retry`` classifies as permanent → dead-letter now;
3. immediate retries left (``Retry.immediate``) → run the handler again at once;
4. delivery attempts left (``Retry.max_attempts``) → nack with a backoff delay;
5. otherwise → dead-letter, with the exception and the attempt count as reason.

:class:`KillSwitch` follows MassTransit's: after ``activation`` outcomes in the sliding ``window``,
a failure ratio of at least ``trip`` stops the runner taking messages for ``restart``; then one
message probes the downstream service, and the runner resumes if it succeeds or stops again if not.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from unimq.durations import seconds
from unimq.errors import ConfigError, Timeout, scrub


class Reject(Exception):
    """Raise in a handler to dead-letter the message at once, with ``reason``, without retries."""

    def __init__(self, reason: str = "rejected by the handler") -> None:
        super().__init__(reason)
        self.reason = reason


class HandlerTimeout(Timeout):
    """The handler ran longer than ``handler_timeout`` and was cancelled; retried like any failure."""


def failure_reason(exc: BaseException, attempt: int) -> str:
    """The dead-letter reason for ``exc``: its type, message (secrets scrubbed) and the attempt."""
    if isinstance(exc, Reject):
        return scrub(exc.reason)
    detail = scrub(str(exc))
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return f"{text} (attempt {attempt})"


@dataclass(frozen=True)
class KillSwitch:
    """Stop consuming while a downstream dependency fails, instead of burning every message's retries.

    ``activation``: outcomes needed in the window before the ratio is judged; ``trip``: the failure
    ratio, in (0, 1], that stops the runner; ``restart``: the pause before a probe; ``window``: how far
    back outcomes count. Durations are float seconds or ``timedelta``.
    """

    activation: int = 10
    trip: float = 0.15
    restart: timedelta | float = timedelta(minutes=1)
    window: timedelta | float = timedelta(minutes=1)
    _restart: float = field(init=False, repr=False, compare=False, default=0.0)
    _window: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        if not isinstance(self.activation, int) or isinstance(self.activation, bool) or self.activation < 1:
            raise ConfigError(f"KillSwitch.activation must be an integer >= 1, got {self.activation!r}")
        trip = self.trip
        if (not isinstance(trip, (int, float)) or isinstance(trip, bool) or not math.isfinite(trip)
                or not 0 < trip <= 1):
            raise ConfigError(f"KillSwitch.trip must be a failure ratio in (0, 1], got {trip!r}")
        object.__setattr__(self, "_restart", seconds(self.restart, "KillSwitch.restart", allow_zero=False))
        object.__setattr__(self, "_window", seconds(self.window, "KillSwitch.window", allow_zero=False))

    @property
    def restart_seconds(self) -> float:
        return self._restart

    @property
    def window_seconds(self) -> float:
        return self._window


class SwitchState(StrEnum):
    RUNNING = "running"
    TRIPPED = "tripped"
    PROBING = "probing"


class SwitchTracker:
    """The state of one runner's kill switch. Time is ``time.monotonic()`` unless given (tests)."""

    def __init__(self, config: KillSwitch) -> None:
        self.config = config
        self.state = SwitchState.RUNNING
        self.tripped_at = 0.0
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures = 0

    @property
    def ratio(self) -> float:
        return self._failures / len(self._outcomes) if self._outcomes else 0.0

    def record(self, failed: bool, now: float | None = None) -> bool:
        """Count one handler outcome while running; True if it trips the switch."""
        now = time.monotonic() if now is None else now
        outcomes = self._outcomes
        horizon = now - self.config.window_seconds
        while outcomes and outcomes[0][0] < horizon:
            self._failures -= outcomes.popleft()[1]
        outcomes.append((now, failed))
        self._failures += failed
        if failed and len(outcomes) >= self.config.activation and self.ratio >= self.config.trip:
            self.trip(now)
            return True
        return False

    def trip(self, now: float | None = None) -> None:
        self.state = SwitchState.TRIPPED
        self.tripped_at = time.monotonic() if now is None else now

    def pause_left(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return max(0.0, self.tripped_at + self.config.restart_seconds - now)

    def probe(self) -> None:
        self.state = SwitchState.PROBING

    def recovered(self) -> None:
        """The probe succeeded: run again, judging only outcomes from now on."""
        self.state = SwitchState.RUNNING
        self._outcomes.clear()
        self._failures = 0
