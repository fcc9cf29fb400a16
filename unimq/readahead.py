"""Read-ahead for drivers whose client fetches in the background: written once for every such driver.

A client that fetches on its own schedule — a poll task (aiokafka), a poll thread (librdkafka) —
turns what it fetched into deliveries and ``append``\\s them here; the subscription's ``receive`` is
:meth:`ReadAhead.take`. The rules every such driver shares live in this one class:

- ``take`` waits for data up to the core's timeout, and raises the error the fetcher reported
  once the buffer is drained (it stays raised: a fetcher that failed for good does not come back);
- the buffer is refilled a batch at a time: the fetcher stops while it holds more than half of
  ``capacity`` (:attr:`full`), and ``take`` calls ``on_room`` when it is down to half, so the next
  fetch overlaps the processing of the current batch.

How the fetcher waits for room is the driver's (an ``asyncio.Event`` for a task, a
``threading.Event`` for a thread): ``on_room`` is the one call the core makes into it. Every method
runs on the event loop; a thread hands results over with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from unimq.message import Delivery


class ReadAhead:
    """The deliveries a background fetcher got ahead of the consumer."""

    def __init__(self, capacity: int, on_room: Callable[[], None]) -> None:
        self._items: deque[Delivery] = deque()
        self._low = capacity // 2
        self._on_room = on_room
        self._data = asyncio.Event()
        self._error: BaseException | None = None
        #: The fetching side's hot path: add one delivery (then :meth:`notify` once per batch).
        self.append = self._items.append

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """The fetcher should wait for ``on_room`` before fetching more."""
        return len(self._items) > self._low

    def notify(self) -> None:
        """Wake a waiting :meth:`take` after one or more :attr:`append` calls."""
        if self._items:
            self._data.set()

    def extend(self, deliveries: list[Delivery]) -> None:
        self._items.extend(deliveries)
        self.notify()

    def fail(self, error: BaseException) -> None:
        """The fetcher stopped for good: :meth:`take` raises ``error`` once the buffer is drained."""
        self._error = error
        self._data.set()

    def discard(self, drop: Callable[[Delivery], bool]) -> None:
        """Forget the deliveries ``drop`` selects (e.g. of partitions revoked by a rebalance)."""
        if self._items:
            kept = [d for d in self._items if not drop(d)]
            self._items.clear()
            self._items.extend(kept)

    def clear(self) -> None:
        self._items.clear()

    async def take(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, waiting up to ``timeout`` for the first."""
        items = self._items
        if not items:
            if self._error is not None:
                raise self._error
            self._data.clear()
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._data.wait()
            if not items:
                if self._error is not None:
                    raise self._error
                return []
        if len(items) <= max_messages:
            out = list(items)
            items.clear()
        else:
            out = [items.popleft() for _ in range(max_messages)]
        if len(items) <= self._low:
            self._on_room()
        return out
