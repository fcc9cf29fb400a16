"""FastAPI integration: start and stop a ``unimq.App`` with the web app, publish from endpoints.

    app = unimq.App("kafka://...")
    api = FastAPI(lifespan=lifespan(app))

    @api.post("/orders")
    async def create(order: Order, orders: AppProducer = Depends(producer(app, "orders", schema=Order))):
        await orders.send(order)

Needs ``pip install "unimq[fastapi]"``. ``lifespan(app, subscribe=False)`` only connects (an API
process that publishes while separate ``unimq run`` workers consume).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from pydantic import BaseModel

from unimq.errors import ConfigError

from .core import App, AppProducer

try:
    from fastapi import FastAPI, HTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigError(f'the FastAPI integration needs FastAPI: pip install "unimq[fastapi]" ({exc})') from None

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def lifespan(app: App, *, subscribe: bool = True, inner: Lifespan | None = None) -> Lifespan:
    """A FastAPI ``lifespan`` that starts ``app`` before serving and stops it after (draining its
    in-flight messages). ``inner`` is the web app's own lifespan, entered while ``app`` runs."""

    @asynccontextmanager
    async def run(api: FastAPI) -> AsyncIterator[Any]:
        await app.start(subscribe=subscribe)
        try:
            if inner is None:
                yield None
            else:
                async with inner(api) as state:
                    yield state
        finally:
            await app.stop()

    return run


def producer(app: App, destination: str, *, schema: type[BaseModel] | None = None) -> Callable[[], AppProducer]:
    """A dependency giving an endpoint a producer for ``destination`` (503 while ``app`` is not running)."""

    def dependency() -> AppProducer:
        if not app.running:
            raise HTTPException(status_code=503, detail="the messaging app is not running")
        return app.producer(destination, schema=schema)

    return dependency
