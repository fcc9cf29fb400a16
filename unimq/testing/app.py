"""``TestApp``: run a ``unimq.App`` in a test, publish to it and wait for its handlers.

    async with TestApp(app) as client:
        await client.publish("orders", Order(id=1))
        [call] = await client.wait_for(bill)
        assert call.result == Invoice(order_id=1)

By default the app runs on a fresh, private ``memory://`` broker (whatever URL it was declared
with), so tests are isolated and need nothing running; pass ``url=`` to run it on a real backend.
Every wait is bounded by ``timeout`` and raises :class:`unimq.Timeout` naming what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unimq.app.core import App, Subscriber
from unimq.app.handlers import handler_name
from unimq.app.middleware import Middleware, PublishNext
from unimq.broker import Broker, connect
from unimq.errors import Timeout
from unimq.message import Delivery, Message, new_message_id


@dataclass(frozen=True)
class Call:
    """One handler call: what it received and how it ended."""

    subscriber: Subscriber
    delivery: Delivery
    result: Any
    error: BaseException | None

    @property
    def payload(self) -> Any:
        return self.delivery.payload

    @property
    def message(self) -> Message:
        return self.delivery.message


class _Recorder(Middleware):
    """Records what the app publishes (after the app's own middlewares ran)."""

    def __init__(self, client: TestApp) -> None:
        self._client = client

    async def publish(self, destination: str, message: Message, call_next: PublishNext) -> Message:
        sent = await call_next(destination, message)
        self._client._published.setdefault(destination, []).append(sent)
        self._client._changed()
        return sent


class TestApp:
    """An async context manager that starts ``app`` on a test broker and stops it on exit."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, url: str | None = None, *, timeout: float = 5.0) -> None:
        self.app = app
        self.url = url or f"memory://unimq-testapp-{new_message_id()[:12]}"
        self.timeout = timeout
        self._calls: list[Call] = []
        self._published: dict[str, list[Message]] = {}
        self._event = asyncio.Event()
        self._broker: Broker | None = None
        self._saved: tuple[str | None, Broker | None] | None = None
        self._recorder = _Recorder(self)

    @property
    def broker(self) -> Broker:
        return self.app.broker

    async def __aenter__(self) -> TestApp:
        app = self.app
        self._broker = await connect(self.url)
        self._saved = (app._url, app._given)
        app._url, app._given = None, self._broker
        app.middlewares.append(self._recorder)
        app.observers.append(self._observe)
        try:
            await app.start()
        except BaseException:
            await self._restore()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.app.stop()
        finally:
            await self._restore()

    async def _restore(self) -> None:
        app = self.app
        if self._saved is not None:
            app._url, app._given = self._saved
            self._saved = None
        with contextlib.suppress(ValueError):
            app.middlewares.remove(self._recorder)
        with contextlib.suppress(ValueError):
            app.observers.remove(self._observe)
        if self._broker is not None:
            await self._broker.close()
            self._broker = None

    def _observe(self, sub: Subscriber, delivery: Delivery, result: Any, error: BaseException | None) -> None:
        self._calls.append(Call(sub, delivery, result, error))
        self._changed()

    def _changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    # Acting

    async def publish(self, destination: str, value: Any, **fields: Any) -> Message:
        """Send ``value`` to ``destination`` as the app would (schema-less encoding, see AppProducer)."""
        return await self.app.publish(destination, value, **fields)

    # Observing

    def calls(self, handler: Callable[..., Any] | str | None = None) -> list[Call]:
        """Calls so far, of one handler (the function, or its destination) or of all."""
        return [c for c in self._calls if _matches(c.subscriber, handler)]

    def published(self, destination: str) -> list[Message]:
        """Messages the app published to ``destination`` (handler results and ``app.publish``)."""
        return list(self._published.get(destination, []))

    async def wait_for(self, handler: Callable[..., Any] | str | None = None, count: int = 1,
                       timeout: float | None = None) -> list[Call]:
        """Wait until ``handler`` has been called ``count`` times (successful or not); return the calls."""
        what = "any handler" if handler is None else (handler if isinstance(handler, str) else handler_name(handler))
        await self._wait(lambda: len(self.calls(handler)) >= count, f"{count} call(s) of {what}", timeout)
        return self.calls(handler)[:count]

    async def wait_published(self, destination: str, count: int = 1, timeout: float | None = None) -> list[Message]:
        """Wait until the app has published ``count`` messages to ``destination``; return them."""
        await self._wait(lambda: len(self.published(destination)) >= count,
                         f"{count} message(s) published to {destination!r}", timeout)
        return self.published(destination)[:count]

    async def _wait(self, done: Callable[[], bool], what: str, timeout: float | None) -> None:
        seconds = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Timeout(f"TestApp: no {what} within {seconds:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)


def _matches(sub: Subscriber, handler: Callable[..., Any] | str | None) -> bool:
    if handler is None:
        return True
    if isinstance(handler, str):
        return handler in (sub.destination, sub.name)
    return sub.func is handler
