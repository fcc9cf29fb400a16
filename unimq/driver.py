"""The driver interface: what an adapter implements, and nothing more.

Like Go CDK's ``driver`` package, drivers are thin translations to one client library. The
portable types in :mod:`unimq.broker` do the hard work around them: capability checks, batching
and pipelining of sends, retries with backoff, bounded prefetch, dead-letter emulation, payload
codecs and error wrapping. A driver does not retry and does not validate options against its own
capabilities; the core has already done both before calling it.

An adapter registers its driver class under the ``unimq.adapters`` entry-point group, one entry
per URL scheme. See ``docs/adapters.md``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from unimq.capabilities import Capabilities
from unimq.errors import UnimqError, wrap
from unimq.message import Delivery, Message
from unimq.url import BrokerURL, NoOptions

Start = Literal["earliest", "latest"] | datetime | int | None


class ReceiveSettings(BaseModel):
    """How a consumer reads: given to :meth:`Driver.subscription`."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    prefetch: int = Field(100, ge=1)
    lock_timeout: float | None = Field(None, gt=0, description="seconds; None = the backend's default")
    start: Start = Field(None, description="where a new group starts: 'earliest', 'latest', a time or an offset")


class DestinationSpec(BaseModel):
    """What :meth:`Broker.ensure` provisions. A field the backend cannot honour is a CapabilityError."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    groups: tuple[str, ...] = ()
    partitions: int | None = Field(None, ge=1)
    replication: int | None = Field(None, ge=1)
    dead_letter: bool = True
    deduplication: timedelta | None = None
    fifo: bool | None = None
    max_deliveries: int | None = Field(None, ge=1)
    lock_timeout: timedelta | None = None
    retention: timedelta | None = None
    max_priority: int | None = Field(None, ge=1, le=255)
    sessions: bool = False


class Stats(BaseModel):
    """Depth and lag of a destination, as far as the backend can tell (``None`` = unknown)."""

    destination: str
    group: str | None = None
    depth: int | None = None
    in_flight: int | None = None
    dead_letter_depth: int | None = None
    lag: int | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class Subscription(abc.ABC):
    """A driver's reader for one (destination, group). Created closed; the core calls :meth:`open`."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, create the group if needed, start fetching."""

    @abc.abstractmethod
    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Return up to ``max_messages`` deliveries; wait at most ``timeout`` seconds for the first.

        Returning an empty list is fine. Must be safe to cancel: a message fetched but not
        returned must come back after the lock timeout or close, never be lost.
        """

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """Settle as processed. An ack for a message whose lock was lost must not raise."""

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Settle several as processed; override to use one round trip (XACK, DeleteMessageBatch, …)."""
        for delivery in deliveries:
            await self.ack(delivery)

    @abc.abstractmethod
    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        """Make the message redeliverable now (``delay`` None) or not before ``delay`` seconds."""

    async def reject(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter natively. The default raises NotImplementedError and the core emulates."""
        raise NotImplementedError

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        """Extend the lock. Only called when ``lock_extension`` is not ``none``."""
        raise NotImplementedError

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop fetching; unsettled messages must become redeliverable."""


class Driver(abc.ABC):
    """One connection to one broker, as an adapter sees it."""

    #: Short backend name used in messages and tables, e.g. ``"kafka"``.
    name: ClassVar[str]
    #: Pydantic model of the URL query parameters and keyword options.
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, url: BrokerURL, options: Any) -> None:
        self.url = url
        self.options = options

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """The backend's declaration; constant for the life of the driver."""

    def capabilities_for(self, destination: str) -> Capabilities:
        """Capabilities of one destination, where they differ (e.g. SQS FIFO queues)."""
        return self.capabilities

    @property
    def native(self) -> Any:
        """The underlying client object (the escape hatch)."""
        return None

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect. Errors should be wrapped as unimq ConnectionError/ConfigError."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect and free resources."""

    @abc.abstractmethod
    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        """Send ``messages`` (at most ``batch_send.limit``) and wait until the broker accepted them.

        Return, per message, ``None`` for success or the exception. Raising means all failed.
        """

    @abc.abstractmethod
    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        """Return an unopened reader for ``destination`` in ``group`` (None = the default group)."""

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:  # noqa: B027
        """Create the destination, its groups and dead-letter destination where the backend allows it."""

    async def peek(self, destination: str, count: int) -> list[Message]:
        raise NotImplementedError

    async def stats(self, destination: str, group: str | None) -> Stats:
        return Stats(destination=destination, group=group)

    async def destinations(self) -> list[str]:
        raise NotImplementedError

    async def delete(self, destination: str) -> None:  # noqa: B027
        """Remove a destination and what ensure() created for it (used by tests to clean up)."""

    def dead_letter_destination(self, destination: str) -> str:
        """Where rejected messages of ``destination`` go."""
        return f"{destination}.dlq"

    def map_error(self, exc: BaseException, context: str) -> UnimqError:
        """Turn a client-library exception into a unimq error. Adapters refine this mapping."""
        return wrap(exc, context)
