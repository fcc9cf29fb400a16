"""The driver interface: what an adapter implements, and nothing more.

Like Go CDK's ``pubsub/driver``, drivers are thin translations to one client library. The portable
types in :mod:`unimq.broker` and :mod:`unimq.settlement` do the work around them, once for every
backend:

- before any call: option and message validation, capability checks (``check_message``,
  ``check_spec``), so a driver never sees an option its capabilities declare ``none``;
- sending: chunking to ``batch_send.limit``, pipelining, retry of retryable failures with backoff;
- receiving: bounded prefetch, payload decoding (a payload that fails is dead-lettered), dropping
  deliveries already expired (``Delivery.expires_at``), dead-lettering deliveries past
  ``Subscription.max_deliveries``;
- settling: ack batching within the limits the subscription declares (``ack_batch``),
  dead-letter emulation (a copy to ``dead_letter_destination`` then an ack) unless the subscription
  settles natively (``native_reject``), nack emulation (a redelivery copy handed to
  ``Subscription.redeliver`` then an ack) unless ``native_nack``;
- errors: every exception a hook raises goes through :meth:`Driver.map_error` (the driver's
  ``errors`` table, then the generic rows of :data:`unimq.errors.GENERIC_ERRORS`).

A driver never retries, never validates options against its own capabilities, and never signals
"not supported" by raising: it declares it in its :class:`~unimq.capabilities.Capabilities`, and
the core never calls a hook whose capability is ``none``.

An adapter registers its driver class under the ``unimq.adapters`` entry-point group, one entry
per URL scheme, and its conformance targets under ``unimq.targets``. See ``docs/adapters.md``.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from unimq.capabilities import Capabilities
from unimq.errors import ErrorRule, UnimqError, wrap
from unimq.message import Delivery, Message
from unimq.url import BrokerURL, NoOptions

Start = Literal["earliest", "latest"] | datetime | int | None


class ReceiveSettings(BaseModel):
    """How a consumer reads: given to :meth:`Driver.subscription`."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    prefetch: int = Field(100, ge=1)
    lock_timeout: float | None = Field(None, gt=0, description="seconds; None = the backend's default")
    start: Start = Field(None, description="where a new group starts: 'earliest', 'latest', a time or an offset")
    subject: str | None = Field(None, description="the group's routing pattern (checked); a driver whose 'routing' "
                                "capability is native narrows what the group gets (a binding, a filter "
                                "subject). The core filters every delivery as well, so a driver may ignore it")
    headers: Mapping[str, str] | None = Field(None, description="the group's header filter (checked: every key "
                                              "must have that value); a driver may narrow natively as for "
                                              "subject, the core filters every delivery as well")


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
    dead_letter_expired: bool = False
    #: The broker removes it by itself once unused (crash clean-up). Only where the ``temporary``
    #: capability is native; :meth:`Broker.temporary` and ``request()`` set it there.
    temporary: bool = False


class Stats(BaseModel):
    """Depth and lag of a destination, as far as the backend can tell (``None`` = unknown)."""

    destination: str
    group: str | None = None
    depth: int | None = None
    in_flight: int | None = None
    dead_letter_depth: int | None = None
    lag: int | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class AckBatch:
    """How the core may batch acks for a subscription (Go CDK's ``ackBatcherOpts``), as data.

    ``max_batch``: most deliveries in one :meth:`Subscription.ack_many` call. ``max_in_flight``:
    most ``ack_many`` calls running at once. ``Subscription.ack_batch = None`` means: no batching,
    every ``delivery.ack()`` awaits its own ``ack_many([delivery])`` (for in-process brokers, where
    an ack costs no round trip).
    """

    max_batch: int = 100
    max_in_flight: int = 2


class Subscription(abc.ABC):
    """A driver's reader for one (destination, group). Created closed; the core calls :meth:`open`.

    Concurrency: the core never runs two :meth:`receive` calls at once on one subscription; it may
    run ``ack_many``, ``nack``, ``reject``, ``redeliver`` and ``extend`` concurrently with each other
    and with ``receive`` (settlements come from handler tasks). After :meth:`close` starts, no hook
    is called again.
    """

    #: Limits for the core's ack batcher; ``None`` = ack one at a time, awaited.
    ack_batch: ClassVar[AckBatch | None] = AckBatch()
    #: True: the core calls :meth:`nack` (the broker redelivers). False: the core makes a
    #: redelivery copy (attempt + 1, not-before time) and calls :meth:`redeliver`, then acks.
    native_nack: ClassVar[bool] = True
    #: True: the core calls :meth:`reject` (a broker-side dead-letter queue). False: the core
    #: publishes a dead-letter copy to ``Driver.dead_letter_destination`` and acks the original.
    native_reject: ClassVar[bool] = False
    #: Deliveries past this many attempts are dead-lettered by the core on receipt. ``open()`` sets
    #: it from where every process sees it (queue arguments, stream or topic metadata); ``None`` when
    #: there is no limit or the broker enforces it itself.
    max_deliveries: int | None = None
    #: True when the destination asked for expired messages to be dead-lettered
    #: (``ensure(dead_letter_expired=True)``) and the core sees the expiry on receipt: the core then
    #: dead-letters a delivery whose ``expires_at`` has passed instead of dropping it. Set by ``open()``.
    dead_letter_expired: bool = False
    #: The lock in force for this reader in seconds, where ``open()`` learns it (e.g. from
    #: ``ensure(lock_timeout=)``); the runner renews locks before it runs out.
    lock_timeout: float | None = None

    #: The core's deliveries received but not yet handed to the application (set by the core).
    _unread: deque[Delivery] | None = None

    def discard_unread(self, lost: Callable[[Delivery], bool]) -> list[Delivery]:
        """For the driver to call, never overridden: the core forgets the deliveries it holds unread
        for which ``lost`` is true, and returns them. A driver calls it when the broker will
        redeliver them anyway (a lost channel's, a revoked partition's), so they are not handed out
        and processed twice. What the application already holds stays: its settlements must not raise."""
        unread = self._unread
        if not unread:
            return []
        dropped = [delivery for delivery in unread if lost(delivery)]
        if dropped:
            kept = [delivery for delivery in unread if not lost(delivery)]
            unread.clear()
            unread.extend(kept)
        return dropped

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, create the group if needed (a group created here receives what is sent from now
        on, or its backlog where ``new_group_backlog`` says so), read ``max_deliveries``.
        Called once, before any other hook."""

    @abc.abstractmethod
    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Return up to ``max_messages`` deliveries; wait at most ``timeout`` seconds for the first
        (``timeout`` 0: return what is available now, without waiting).

        Returning an empty list is fine. Must be safe to cancel: a message fetched but not
        returned must come back after the lock timeout or close, never be lost. The core drops
        expired deliveries and dead-letters those past ``max_deliveries`` itself. A client that
        fetches in the background fills a :class:`unimq.readahead.ReadAhead` and returns its ``take()``.
        """

    @abc.abstractmethod
    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Settle deliveries as processed, in one round trip where the broker allows. At most
        ``ack_batch.max_batch`` of them. An ack for a message whose lock was lost must not raise."""

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        """Make the message redeliverable now (``delay`` None) or not before ``delay`` seconds.
        Called only when ``native_nack``; ``delay`` only when ``nack_delay`` is not ``none``."""
        raise TypeError(f"{type(self).__name__} declares native_nack but has no nack()")

    async def redeliver(self, copy: Message, delay: float | None) -> None:
        """Publish ``copy`` where this group reads it again, not before ``delay`` seconds. Called
        only when not ``native_nack``; the core acks the original after this returns."""
        raise TypeError(f"{type(self).__name__} declares native_nack=False but has no redeliver()")

    async def reject(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter natively. Called only when ``native_reject`` and ``dead_letter`` is not ``none``."""
        raise TypeError(f"{type(self).__name__} declares native_reject but has no reject()")

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        """Keep the lock ``seconds`` longer. Called only when ``lock_extension`` is not ``none``."""
        raise TypeError(f"{type(self).__name__} declares lock_extension but has no extend()")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop fetching, promptly (cancel polls in flight rather than wait them out); unsettled
        messages must become redeliverable, at once where the broker allows. The core has already
        sent every queued ack. Called once; also after an ``open()`` that raised or was cancelled
        (then it closes whatever that open started, and the core reads through a new subscription)."""


class Driver(abc.ABC):
    """One connection to one broker, as an adapter sees it."""

    #: Short backend name used in messages and tables, e.g. ``"kafka"``.
    name: ClassVar[str]
    #: Pydantic model of the URL query parameters and keyword options.
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: The error table: client-library exception → unimq class (see :data:`unimq.errors.GENERIC_ERRORS`).
    errors: ClassVar[Sequence[ErrorRule]] = ()

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
        """Connect, so that a wrong URL or credential fails here rather than at the first send."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect and free resources. Every consumer was closed before."""

    @abc.abstractmethod
    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        """Send ``messages`` (at most ``batch_send.limit``, already validated) and wait until the
        broker accepted them. Return, per message, ``None`` or the exception. Raising means all
        failed. May run concurrently (the core pipelines batches when ordering allows)."""

    @abc.abstractmethod
    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        """Return an unopened reader for ``destination`` in ``group`` (None = the default group)."""

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:  # noqa: B027
        """Create the destination, its groups and dead-letter destination. Every field of ``spec``
        the capabilities declare ``none`` was refused by the core; every other field must be
        honoured, and kept where another process sees it (``max_deliveries`` included)."""

    async def peek(self, destination: str, count: int) -> list[Message]:
        """Read without consuming. Called only when ``peek`` is not ``none``."""
        raise TypeError(f"{type(self).__name__} declares peek but has no peek()")

    async def stats(self, destination: str, group: str | None) -> Stats:
        """Depth, in-flight, dead-letter depth and lag, as far as the broker tells."""
        return Stats(destination=destination, group=group)

    async def destinations(self) -> list[str]:
        """Names of the destinations the broker knows."""
        return []

    async def delete(self, destination: str) -> None:  # noqa: B027
        """Remove a destination and what ensure() created for it (used by tests to clean up)."""

    async def reply_inbox(self, deliver: Callable[[Message], None]) -> str | None:
        """A private, unstored reply address for :meth:`Broker.request`, where the broker has one
        (NATS: a core-NATS inbox); None (the default) and the core reads a reply destination of its own.

        Called at most once per Broker, on its first ``request()``. ``deliver`` is called, on the
        event loop, with every message published to the address; nothing is settled (a reply nobody
        waits for is lost, as the request has timed out). :meth:`publish` to the returned address
        must send there, from any process of this backend. The subscription ends with :meth:`close`.
        """
        return None

    def dead_letter_destination(self, destination: str) -> str:
        """Where rejected messages of ``destination`` go."""
        return f"{destination}.dlq"

    def map_error(self, exc: BaseException, context: str) -> UnimqError:
        """Turn a client-library exception into a unimq error through :attr:`errors`."""
        return wrap(exc, context, self.errors)
