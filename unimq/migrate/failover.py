"""Cross-backend failover for producers: keep sending when the primary backend is down.

:class:`FailoverProducer` sends to the primary. When the primary has failed with retryable errors
(unreachable, timeouts) for longer than ``after`` seconds, it sends to the secondary instead and
records each message sent there in a :class:`~unimq.migrate.journal.Journal` (the one the dual
producer uses), so what went where is known afterwards. Switching back is explicit
(:meth:`FailoverProducer.switch_back`) or, given the primary's broker as ``probe``, automatic once
``probe.health()`` answers ok. Consumers read both sides (e.g. :class:`MergedConsumer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any, Literal

from unimq.broker import Broker, Producer
from unimq.capabilities import Capabilities, check_message, intersect
from unimq.durations import Duration, seconds
from unimq.errors import BrokerConnectionError, UnimqError
from unimq.message import Message
from unimq.migrate.journal import Journal

log = logging.getLogger("unimq.migrate")

Side = Literal["primary", "secondary"]


class FailoverProducer:
    """Sends to ``primary``; after ``after`` seconds of failures, to ``secondary`` (journaled).

    A send during an outage waits until the bound has passed (retrying the primary every
    ``retry_every`` seconds, each attempt bounded by ``send_timeout``) and then goes to the
    secondary: it fails only on a non-retryable error or when the secondary fails too.
    """

    def __init__(
        self,
        primary: Producer,
        secondary: Producer,
        journal: Journal | str | os.PathLike[str],
        *,
        after: Duration = 5.0,
        send_timeout: Duration = 5.0,
        retry_every: Duration = 0.2,
        probe: Broker | None = None,
        check_every: Duration = 1.0,
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.journal = journal if isinstance(journal, Journal) else Journal(journal)
        self.after = seconds(after, "after")
        self.send_timeout = seconds(send_timeout, "send_timeout", allow_zero=False)
        self.retry_every = seconds(retry_every, "retry_every")
        self.check_every = seconds(check_every, "check_every", allow_zero=False)
        self.probe = probe
        self.capabilities: Capabilities = intersect(primary.capabilities, secondary.capabilities)
        self.active: Side = "primary"
        self.switches = 0
        self._failing_since: float | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FailoverProducer:
        if self.probe is not None:
            self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    def switch_back(self) -> None:
        """Send to the primary again (the next outage starts a new ``after`` bound)."""
        if self.active == "secondary":
            log.warning("failover: switching back to the primary %s", self.primary.destination)
        self.active = "primary"
        self._failing_since = None

    async def send(self, body: Any, **options: Any) -> Message:
        """Send one message; return it (``message_id`` is the same on either side)."""
        message = self.primary.message(body, **options)
        check_message(self.capabilities, message)
        while self.active == "primary":
            try:
                await asyncio.wait_for(self.primary.send(message), self.send_timeout)
            except (UnimqError, TimeoutError) as exc:
                if isinstance(exc, UnimqError) and not exc.retryable:
                    raise
                now = time.monotonic()
                self._failing_since = self._failing_since or now
                if now - self._failing_since < self.after:
                    await asyncio.sleep(self.retry_every)
                    continue
                self.active = "secondary"
                self.switches += 1
                log.warning("failover: the primary has failed for %.1fs (%s); sending to the secondary %s",
                            now - self._failing_since, type(exc).__name__, self.secondary.destination)
            else:
                self._failing_since = None
                return message
        try:
            await self.secondary.send(message)
        except UnimqError as exc:
            raise BrokerConnectionError(f"failover: the primary is down and the secondary failed too: {exc}") from exc
        self.journal.append(self.secondary.destination, message)
        return message

    async def _watch(self) -> None:
        assert self.probe is not None
        while True:
            await asyncio.sleep(self.check_every)
            if self.active == "primary":
                continue
            try:
                health = await self.probe.health(timeout=self.check_every)
            except UnimqError:
                continue
            if health.ok:
                self.switch_back()
