"""MCP tools for looking after queued work: dead letters, redrive, purge, health, and ``wait_for``.

An assistant that handed work to a queue needs to see what failed and why
(``list_dead_letters``), send it back (``redrive_dead_letters``), clear a poisoned queue
(``purge``), and know when results arrived without polling (``wait_for``, bounded by the
server's ``--max-wait``). Listing follows the policy: ``redrive_dead_letters`` only with
``--allow-write``, ``purge`` only with its own ``--allow-purge``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from unimq import inspect
from unimq.errors import CapabilityError, Timeout
from unimq.message import Delivery
from unimq.operations import DeadLetter

if TYPE_CHECKING:
    from unimq.mcp.server import Tools

#: Seconds between two stats calls of ``wait_for`` on a depth condition (one call per interval).
POLL = 0.5


class DeadLetterView(inspect.MessageView):
    """A dead letter as shown to an assistant: the message, and why it was dead-lettered."""

    reason: str | None = Field(None, description="why it was dead-lettered, as given by reject() or the broker")
    source: str | None = Field(None, description="the destination it was dead-lettered from")
    group: str | None = Field(None, description="the consumer group that dead-lettered it")
    dead_letter_attempt: int | None = Field(None, description="the delivery attempt that dead-lettered it")
    dead_lettered_at: str | None = Field(None, description="when, ISO 8601 UTC")


class RedriveResult(BaseModel):
    destination: str
    moved: int = Field(description="copied back to the destination, then removed from the dead letters")
    skipped: int = Field(description="left dead-lettered: not chosen by group or reason_contains")
    failed: int = Field(description="could not be copied back; still dead-lettered")
    errors: list[str] = Field(default_factory=list)


class PurgeResult(BaseModel):
    destination: str
    purged: str = Field(description="the destination actually emptied (the dead-letter one with dead_letters=true)")
    removed: int


class HealthResult(BaseModel):
    ok: bool
    backend: str
    url: str
    rtt_ms: float | None = None
    error: str | None = None


class WaitResult(BaseModel):
    met: bool = Field(description="true when the condition was met; false when the timeout came first")
    condition: str
    waited_seconds: float
    depth: int | None = Field(None, description="last depth seen (lag where the backend has no depth)")
    reply: inspect.MessageView | None = Field(None, description="the reply, for a correlation_id condition")


def _group(description: str) -> Any:
    """A consumer group argument: not empty (an empty name would silently mean every group)."""
    return Field(min_length=1, description=description)


def dead_letter_view(letter: DeadLetter, max_bytes: int | None) -> DeadLetterView:
    base = inspect.message_view(letter.message, max_bytes=max_bytes)
    return DeadLetterView(**base.model_dump(), reason=letter.reason, source=letter.source, group=letter.group,
                          dead_letter_attempt=letter.attempt,
                          dead_lettered_at=letter.time.isoformat() if letter.time else None)


class OpsTools:
    """The operations tools, under the same policy checks and error handling as the queue tools."""

    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.broker = tools.broker
        self.policy = tools.policy

    async def list_dead_letters(
        self,
        destination: Annotated[str, Field(description="the destination whose dead letters to list")],
        group: Annotated[str | None, _group("only those dead-lettered by this consumer group")] = None,
        count: Annotated[int | None, Field(ge=1, description="how many; default 10")] = None,
    ) -> list[DeadLetterView]:
        """List dead-lettered messages of a destination with why (reason), group, attempt and time; they stay."""
        self.tools._allowed(destination)
        count = min(10, self.policy.max_count) if count is None else count
        self.tools._count(count)

        async def run() -> list[DeadLetterView]:
            await inspect.check_destination(self.broker, destination)
            letters = await self.broker.dead_letters(destination, group, count)
            return [dead_letter_view(letter, self.policy.max_body_bytes) for letter in letters]

        return await self.tools._run(run())

    async def redrive_dead_letters(
        self,
        destination: Annotated[str, Field(description="the destination to move its dead letters back to")],
        group: Annotated[str | None, _group("only those dead-lettered by this consumer group")] = None,
        reason_contains: Annotated[str | None, Field(description="only those whose reason contains this text")] = None,
        limit: Annotated[int | None, Field(ge=1, description="move at most this many; default all")] = None,
        rate: Annotated[float | None, Field(gt=0, allow_inf_nan=False, description="at most this many per second")
                        ] = None,
    ) -> RedriveResult:
        """Move dead letters back to their destination (copy, confirm, then remove: none is lost)."""
        self.tools._allowed(destination)

        def chosen(letter: DeadLetter) -> bool:
            return reason_contains is None or reason_contains in (letter.reason or "")

        async def run() -> RedriveResult:
            await inspect.check_destination(self.broker, destination)
            report = await self.broker.redrive(destination, group=group, filter=chosen, limit=limit, rate=rate)
            return RedriveResult(destination=destination, moved=report.moved, skipped=report.skipped,
                                 failed=report.failed, errors=report.errors[:20])

        return await self.tools._run(run())

    async def purge(
        self,
        destination: Annotated[str, Field(description="the destination to empty")],
        dead_letters: Annotated[bool, Field(description="empty its dead letters instead of the destination")] = False,
        group: Annotated[str | None, _group("the consumer group to empty, where groups have their own "
                                            "queue; omit for the default")] = None,
    ) -> PurgeResult:
        """Remove every waiting message of a destination (or of its dead letters). They are gone for good."""
        self.tools._allowed(destination)

        async def run() -> PurgeResult:
            await inspect.check_destination(self.broker, destination)
            removed = await self.broker.purge(destination, group, dead_letters=dead_letters)
            purged = self.broker.dead_letter_destination(destination) if dead_letters else destination
            return PurgeResult(destination=destination, purged=purged, removed=removed)

        return await self.tools._run(run())

    async def health(self) -> HealthResult:
        """Is the broker answering, and the round-trip time in milliseconds."""
        h = await self.tools._run(self.broker.health())
        return HealthResult(ok=h.ok, backend=h.backend, url=h.url, rtt_ms=h.rtt_ms, error=h.error)

    async def wait_for(
        self,
        destination: Annotated[str, Field(description="the destination to watch")],
        depth_at_least: Annotated[int | None, Field(ge=0, description="return once depth >= this")] = None,
        depth_at_most: Annotated[int | None, Field(ge=0, description="return once depth <= this (0: drained)")
                                 ] = None,
        dead_letters_at_least: Annotated[int | None, Field(ge=0, description="return once this many are "
                                                                             "dead-lettered")] = None,
        correlation_id: Annotated[str | None, Field(description="return once a message with this correlation_id "
                                                                "arrives; it is received and returned")] = None,
        group: Annotated[str | None, _group("consumer group to measure (lag) or receive in")] = None,
        timeout: Annotated[float, Field(gt=0, allow_inf_nan=False, description="seconds; at most the server's "
                                                                               "--max-wait")] = 30.0,
    ) -> WaitResult:
        """Wait (bounded) until a destination's depth or dead-letter count crosses a threshold, or a reply with
        a correlation_id arrives. Returns met=false at the timeout instead of failing, so an assistant need
        not poll."""
        self.tools._allowed(destination)
        self.tools._wait(timeout)
        given = [c for c in (depth_at_least, depth_at_most, dead_letters_at_least, correlation_id) if c is not None]
        if len(given) != 1:
            raise ToolError("wait_for: give exactly one of depth_at_least, depth_at_most, dead_letters_at_least, "
                            "correlation_id")
        if correlation_id is not None:
            self.tools._writable("wait_for(correlation_id=...)")
            return await self.tools._run(self._reply(destination, correlation_id, group, timeout))
        if dead_letters_at_least is not None:
            return await self.tools._run(self._count(destination, group, "dead_letters", ">=",
                                                     dead_letters_at_least, timeout))
        if depth_at_least is not None:
            return await self.tools._run(self._count(destination, group, "depth", ">=", depth_at_least, timeout))
        return await self.tools._run(self._count(destination, group, "depth", "<=", depth_at_most or 0, timeout))

    async def _count(self, destination: str, group: str | None, what: str, op: str, threshold: int,
                     timeout: float) -> WaitResult:
        """Poll ``stats`` every :data:`POLL` seconds until ``what op threshold`` or the timeout."""
        condition = f"{what} {op} {threshold}"
        await inspect.check_destination(self.broker, destination)
        started = time.monotonic()
        while True:
            stats = await self.broker.stats(destination, group)
            if what == "dead_letters":
                depth = stats.dead_letter_depth
            else:
                depth = stats.depth if stats.depth is not None else stats.lag
            if depth is None:
                raise CapabilityError(f"{self.broker.backend} reports no {what} for {destination!r}"
                                      f"{f' (group {group!r})' if group else ''}: wait for a correlation_id instead")
            met = depth >= threshold if op == ">=" else depth <= threshold
            waited = time.monotonic() - started
            if met or waited + POLL > timeout:
                return WaitResult(met=met, condition=condition, waited_seconds=round(waited, 3), depth=depth)
            await asyncio.sleep(POLL)

    async def _reply(self, destination: str, correlation_id: str, group: str | None, timeout: float) -> WaitResult:
        """Receive until the message with ``correlation_id`` arrives; ack it, release every other one."""
        await inspect.check_destination(self.broker, destination)
        condition = f"correlation_id == {correlation_id!r}"
        started = time.monotonic()
        consumer = self.broker.consumer(destination, group, prefetch=self.policy.max_held,
                                        lock_timeout=timeout + 30.0)
        others: list[Delivery] = []
        try:
            await consumer.open()
            while (remaining := timeout - (time.monotonic() - started)) > 0:
                delivery = await consumer.receive(remaining)
                if delivery is None:
                    break
                if delivery.message.correlation_id != correlation_id:
                    others.append(delivery)
                    if len(others) >= self.policy.max_held:
                        raise Timeout(f"wait_for: {len(others)} other messages on {destination!r} came first "
                                      "(the server's max_held); they were released")
                    continue
                view = inspect.message_view(delivery.message, max_bytes=self.policy.max_body_bytes,
                                            attempt=delivery.attempt)
                await delivery.ack()
                return WaitResult(met=True, condition=condition,
                                  waited_seconds=round(time.monotonic() - started, 3), reply=view)
        finally:
            for other in others:
                await other.nack()
            await consumer.close()
        return WaitResult(met=False, condition=condition, waited_seconds=round(time.monotonic() - started, 3))


_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=True)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)
_DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)


def tools(queue_tools: Tools) -> list[tuple[Callable[..., Awaitable[Any]], ToolAnnotations]]:
    """The operations tools the policy in force allows, with their hints, for ``build_server`` to add.

    ``wait_for`` consumes the reply it waits for (a correlation_id condition), so it is not read-only."""
    ops = OpsTools(queue_tools)
    policy = queue_tools.policy
    listed: list[tuple[Callable[..., Awaitable[Any]], ToolAnnotations]] = [
        (ops.health, _READ_ONLY), (ops.list_dead_letters, _READ_ONLY),
        (ops.wait_for, _WRITE if policy.allow_write else _READ_ONLY),
    ]
    if policy.allow_write:
        listed.append((ops.redrive_dead_letters, _WRITE))
    if policy.allow_purge:
        listed.append((ops.purge, _DESTRUCTIVE))
    return listed
