"""A blocking facade over the async API, for scripts, Django views, Celery/Kombu-style code.

    with unimq.sync.connect("redis://localhost") as broker:
        broker.send("orders", b"...", key="customer-42")
        with broker.consumer("orders", group="billing") as consumer:
            for delivery in consumer:
                delivery.ack()

Each ``connect`` runs one event loop in a daemon thread; every call is handed to that loop and
waited for, so the async core is only ever touched from its own thread and the facade is safe to
use from several threads at once. Calling it from inside that loop (an async handler) would
deadlock and is refused: use the async API there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import Future
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel

from unimq import broker as core
from unimq.capabilities import Capabilities
from unimq.codecs import Codec
from unimq.driver import Stats
from unimq.errors import Closed
from unimq.message import Delivery as AsyncDelivery
from unimq.message import Message

T = TypeVar("T")

__all__ = ["Broker", "Consumer", "Delivery", "Producer", "connect"]


class _LoopThread:
    """One event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="unimq-sync-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block for its result; interrupting the wait cancels it."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("unimq.sync called from its own event loop: use the async API inside async code")
        if self.loop.is_closed():
            coro.close()
            raise Closed("this unimq.sync broker is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Cancel what is still running on the loop (a driver's background polls), then end the thread."""
        if self.loop.is_closed():
            return
        if threading.current_thread() is not self._thread and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_the_rest() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


def connect(url: str | None = None, *, require: Iterable[str] = (), **options: Any) -> Broker:
    """Connect to ``url`` (default ``$UNIMQ_URL``, else ``memory://``) and return a blocking Broker."""
    runner = _LoopThread()
    try:
        broker = runner.call(_open(url, tuple(require), options))
    except BaseException:
        runner.stop()
        raise
    return Broker(broker, runner)


async def _open(url: str | None, require: tuple[str, ...], options: dict[str, Any]) -> core.Broker:
    return await core.connect(url, require=require, **options)


class Broker:
    """The blocking twin of :class:`unimq.Broker`; close it (or use ``with``) to stop its loop thread."""

    def __init__(self, broker: core.Broker, runner: _LoopThread) -> None:
        self.aio = broker  #: the async Broker underneath (use it only through ``call``)
        self._runner = runner
        self._producers: dict[str, core.Producer] = {}

    def __repr__(self) -> str:
        return f"<unimq.sync.Broker {self.aio.url}>"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run any coroutine on this broker's loop (e.g. ``broker.call(broker.aio.stats("q"))``)."""
        return self._runner.call(coro, timeout)

    @property
    def url(self) -> str:
        return self.aio.url

    @property
    def backend(self) -> str:
        return self.aio.backend

    @property
    def capabilities(self) -> Capabilities:
        return self.aio.capabilities

    @property
    def closed(self) -> bool:
        return self.aio.closed

    def capabilities_for(self, destination: str) -> Capabilities:
        return self.aio.capabilities_for(destination)

    def dead_letter_destination(self, destination: str) -> str:
        return self.aio.dead_letter_destination(destination)

    def producer(self, destination: str, *, schema: type[BaseModel] | None = None,
                 codec: Codec | None = None) -> Producer:
        return Producer(self, self.aio.producer(destination, schema=schema, codec=codec))

    def send(self, destination: str, body: Any, **fields: Any) -> Message:
        """Send one message to ``destination``; ``fields`` as :meth:`unimq.Producer.send`."""
        return self.call(self._producer(destination).send(body, **fields))

    def send_many(self, destination: str, items: Iterable[Any]) -> list[Message]:
        return self.call(self._producer(destination).send_many(list(items)))

    def _producer(self, destination: str) -> core.Producer:
        producer = self._producers.get(destination)
        if producer is None:
            producer = self._producers[destination] = self.aio.producer(destination)
        return producer

    def consumer(self, destination: str, group: str | None = None, **options: Any) -> Consumer:
        """A blocking consumer; ``options`` as :meth:`unimq.Broker.consumer` (prefetch, schema, ...)."""

        async def make() -> core.Consumer:  # on the loop: a driver may bind loop objects to it
            return self.aio.consumer(destination, group, **options)

        return Consumer(self, self.call(make()))

    def ensure(self, destination: str, **spec: Any) -> None:
        self.call(self.aio.ensure(destination, **spec))

    def peek(self, destination: str, count: int = 10) -> list[Message]:
        return self.call(self.aio.peek(destination, count))

    def stats(self, destination: str, group: str | None = None) -> Stats:
        return self.call(self.aio.stats(destination, group))

    def destinations(self) -> list[str]:
        return self.call(self.aio.destinations())

    def delete(self, destination: str) -> None:
        self.call(self.aio.delete(destination))

    def close(self) -> None:
        """Close the broker (its consumers too) and stop the loop thread. Idempotent."""
        if self._runner.loop.is_closed():
            return
        try:
            self.call(self.aio.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Producer:
    """Sends to one destination; share it between threads freely."""

    def __init__(self, broker: Broker, producer: core.Producer) -> None:
        self.destination = producer.destination
        self._broker = broker
        self._producer = producer

    def send(self, body: Any, **fields: Any) -> Message:
        return self._broker.call(self._producer.send(body, **fields))

    def send_many(self, items: Iterable[Any]) -> list[Message]:
        return self._broker.call(self._producer.send_many(list(items)))


class Delivery:
    """A received message; settle it with ``ack``, ``nack``, ``reject`` (from any thread)."""

    __slots__ = ("_broker", "aio")

    def __init__(self, broker: Broker, delivery: AsyncDelivery) -> None:
        self._broker = broker
        self.aio = delivery  #: the async Delivery underneath

    def __repr__(self) -> str:
        return f"<unimq.sync.Delivery {self.aio!r}>"

    @property
    def message(self) -> Message:
        return self.aio.message

    @property
    def payload(self) -> Any:
        return self.aio.payload

    @property
    def attempt(self) -> int:
        return self.aio.attempt

    @property
    def native(self) -> Any:
        return self.aio.native

    @property
    def settled(self) -> bool:
        return self.aio.settled

    def ack(self) -> None:
        self._broker.call(self.aio.ack())

    def nack(self, delay: timedelta | float | None = None) -> None:
        self._broker.call(self.aio.nack(delay))

    def reject(self, reason: str = "") -> None:
        self._broker.call(self.aio.reject(reason))

    def extend(self, duration: timedelta | float) -> None:
        self._broker.call(self.aio.extend(duration))


class Consumer:
    """Reads one destination in one group. Iterate it (blocks until a message arrives, ends when
    closed), or ``receive(timeout)``. Use it as a context manager so it is closed."""

    def __init__(self, broker: Broker, consumer: core.Consumer) -> None:
        self.destination = consumer.destination
        self.group = consumer.group
        self.aio = consumer  #: the async Consumer underneath
        self._broker = broker

    def open(self) -> Consumer:
        self._broker.call(self.aio.open())
        return self

    def close(self) -> None:
        if not self._broker.closed:
            self._broker.call(self.aio.close())

    def __enter__(self) -> Consumer:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __iter__(self) -> Iterator[Delivery]:
        while True:
            try:
                delivery = self._broker.call(self.aio.__anext__())
            except StopAsyncIteration:
                return
            yield Delivery(self._broker, delivery)

    def receive(self, timeout: timedelta | float | None = None) -> Delivery | None:
        """The next delivery, or None if none arrives within ``timeout`` (None waits forever)."""
        delivery = self._broker.call(self.aio.receive(timeout))
        return None if delivery is None else Delivery(self._broker, delivery)

    def receive_many(self, count: int, timeout: timedelta | float) -> list[Delivery]:
        return [Delivery(self._broker, d) for d in self._broker.call(self.aio.receive_many(count, timeout))]

    def receive_batch(self, max_messages: int, timeout: timedelta | float) -> list[Delivery]:
        return [Delivery(self._broker, d) for d in self._broker.call(self.aio.receive_batch(max_messages, timeout))]

    def ack_many(self, deliveries: Iterable[Delivery]) -> None:
        self._broker.call(self.aio.ack_many([d.aio for d in deliveries]))
