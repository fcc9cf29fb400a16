"""The same App on real brokers: typed handler, published result, a retried failure, a dead letter."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from pydantic import BaseModel

import unimq
from unimq.app import App
from unimq.testing.app import TestApp
from unimq.testing.brokers import timing_for

BACKENDS = [pytest.param(t, marks=pytest.mark.needs_broker(t)) for t in ("redis", "rabbitmq", "kafka", "nats", "sqs")]


class Order(BaseModel):
    id: int


class Invoice(BaseModel):
    order_id: int


@pytest.mark.parametrize("target", BACKENDS)
async def test_an_app_runs_unchanged_on(target: str, broker_url: Callable[[str], str]) -> None:
    url = broker_url(target)
    run = uuid.uuid4().hex[:8]
    orders, invoices = f"app-orders-{run}", f"app-invoices-{run}"
    async with unimq.connect(url) as probe:
        group = "billing" if probe.capabilities_for(orders).fanout else None
    app = App(url)

    @app.subscriber(orders, group=group, schema=Order, concurrency=2,
                    retry=unimq.Retry(max_attempts=2, initial=timedelta(milliseconds=10)))
    @app.publisher(invoices)
    async def bill(order: Order, delivery: unimq.Delivery) -> Invoice:
        if order.id == 0:
            raise ValueError("order 0 is poison")
        if order.id == 1 and delivery.attempt == 1:
            raise RuntimeError("transient")
        return Invoice(order_id=order.id)

    try:
        async with TestApp(app, url=url, timeout=timing_for(url).receive) as client:
            for i in range(4):
                await client.publish(orders, Order(id=i))
            sent = await client.wait_published(invoices, 3)
            assert sorted(Invoice.model_validate_json(m.body).order_id for m in sent) == [1, 2, 3]
            await client.wait_for(bill, 6)  # 0 twice, 1 twice, 2 and 3 once
            assert [c.delivery.attempt for c in client.calls(bill) if c.payload.id == 1] == [1, 2]
            async with client.broker.consumer(client.broker.dead_letter_destination(orders)) as dlq:
                dead = await dlq.receive(timeout=timing_for(url).receive)
                assert dead is not None and Order.model_validate_json(dead.message.body) == Order(id=0)
                await dead.ack()
    finally:
        async with unimq.connect(url) as cleanup:
            for name in (orders, invoices, cleanup.dead_letter_destination(orders)):
                await cleanup.delete(name)
