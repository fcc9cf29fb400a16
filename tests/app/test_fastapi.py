"""The FastAPI integration with FastAPI's TestClient, on memory:// and on Redis."""

import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

import unimq.sync
from unimq.app import App, AppProducer
from unimq.app.fastapi import lifespan, producer


class Order(BaseModel):
    id: int


def service(url: str, dest: str, subscribe: bool = True) -> tuple[FastAPI, App, list[Order], threading.Event]:
    app = App(url)
    seen: list[Order] = []
    arrived = threading.Event()
    events: list[str] = []

    @app.subscriber(dest, group="billing", schema=Order)
    async def bill(order: Order) -> None:
        seen.append(order)
        arrived.set()

    @asynccontextmanager
    async def own(api: FastAPI) -> AsyncIterator[None]:
        events.append(f"inner running={app.running}")
        yield

    api = FastAPI(lifespan=lifespan(app, subscribe=subscribe, inner=own))
    api.state.events = events

    Orders = Annotated[AppProducer, Depends(producer(app, dest, schema=Order))]

    @api.post("/orders")
    async def create(order: Order, orders: Orders) -> dict[str, str]:
        sent = await orders.send(order, key=str(order.id))
        return {"message_id": sent.message_id}

    return api, app, seen, arrived


@pytest.mark.parametrize("target", ["memory", pytest.param("redis", marks=pytest.mark.needs_broker("redis"))])
def test_an_endpoint_publishes_and_the_app_consumes(target: str, broker_url: Callable[[str], str]) -> None:
    url = broker_url(target)
    dest = f"fastapi-{uuid.uuid4().hex[:8]}"
    api, app, seen, arrived = service(url, dest)
    try:
        with TestClient(api) as client:
            assert app.running
            response = client.post("/orders", json={"id": 42})
            assert response.status_code == 200, response.text
            assert arrived.wait(10), "the subscriber never got the order"
            assert seen == [Order(id=42)]
            assert client.post("/orders", json={"id": "x"}).status_code == 422
        assert not app.running  # stopped with the web app
        assert api.state.events == ["inner running=True"]
    finally:
        if target != "memory":
            with unimq.sync.connect(url) as broker:
                broker.delete(dest)


def test_subscribe_false_only_publishes_and_a_stopped_app_is_503() -> None:
    api, app, seen, _ = service(f"memory://fastapi-{uuid.uuid4().hex[:6]}", "orders", subscribe=False)
    with TestClient(api) as client:
        assert client.post("/orders", json={"id": 1}).status_code == 200
        assert app.running and not app.health()[1]["subscribers"]
    assert seen == []
    plain = FastAPI()

    Orders = Annotated[AppProducer, Depends(producer(app, "orders"))]

    @plain.post("/orders")
    async def create(orders: Orders) -> None: ...

    with TestClient(plain) as client:
        response = client.post("/orders")
        assert response.status_code == 503
        assert response.json() == {"detail": "the messaging app is not running"}
