"""Middlewares: one hook around every handler call and one around every publish of an App.

A middleware overrides either method and calls ``call_next`` to go on (or does not, to stop).
The chain is composed once when the app starts, so an app without middlewares calls its handlers
and producers directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from unimq.message import Delivery, Message

ConsumeNext = Callable[[Delivery], Awaitable[Any]]
PublishNext = Callable[[str, Message], Awaitable[Message]]


class Middleware:
    """Base class: both hooks pass through. The first middleware of an app is the outermost."""

    async def consume(self, delivery: Delivery, call_next: ConsumeNext) -> Any:
        """Around a handler: ``call_next(delivery)`` runs it and returns its result (raise = failure)."""
        return await call_next(delivery)

    async def publish(self, destination: str, message: Message, call_next: PublishNext) -> Message:
        """Around a send: change ``message`` (headers, key) and pass it on; returns the sent Message."""
        return await call_next(destination, message)


def _overrides(middleware: Middleware, name: str) -> bool:
    return getattr(type(middleware), name) is not getattr(Middleware, name)


def consume_chain(middlewares: Sequence[Middleware], inner: ConsumeNext) -> ConsumeNext:
    call = inner
    for middleware in reversed([m for m in middlewares if _overrides(m, "consume")]):
        call = partial(middleware.consume, call_next=call)
    return call


def publish_chain(middlewares: Sequence[Middleware], inner: PublishNext) -> PublishNext:
    call = inner
    for middleware in reversed([m for m in middlewares if _overrides(m, "publish")]):
        call = partial(middleware.publish, call_next=call)
    return call
