"""unimq.App on memory://: decorated handlers, publishers, hooks, routers, middlewares, bad input."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from pydantic import BaseModel

import unimq
from unimq.app import App, Middleware, Router
from unimq.errors import ConfigError
from unimq.testing.app import TestApp

FAST = unimq.Retry(max_attempts=3, initial=timedelta(milliseconds=1), max_delay=timedelta(milliseconds=5))


class Order(BaseModel):
    id: int
    amount: float = 0.0


class Invoice(BaseModel):
    order_id: int
    total: float


async def test_async_handler_gets_the_model_and_its_result_is_published() -> None:
    app = App("memory://")

    @app.subscriber("orders", group="billing", schema=Order, concurrency=4)
    @app.publisher("invoices")
    async def bill(order: Order) -> Invoice:
        return Invoice(order_id=order.id, total=order.amount * 2)

    async with TestApp(app) as client:
        sent = await client.publish("orders", Order(id=7, amount=1.5))
        [call] = await client.wait_for(bill)
        [invoice] = await client.wait_published("invoices")
    assert call.payload == Order(id=7, amount=1.5)
    assert call.result == Invoice(order_id=7, total=3.0)
    assert Invoice.model_validate_json(invoice.body) == Invoice(order_id=7, total=3.0)
    assert invoice.content_type == "application/json"
    assert invoice.correlation_id == sent.message_id


async def test_sync_handler_runs_off_the_loop_and_gets_the_delivery() -> None:
    app = App()
    seen: list[tuple[str, int, str]] = []

    @app.subscriber("orders", publish_to="invoices")
    def bill(order: Order, delivery: unimq.Delivery) -> Invoice:  # schema inferred from the annotation
        seen.append((threading.current_thread().name, delivery.attempt, delivery.message.key or ""))
        return Invoice(order_id=order.id, total=0)

    async with TestApp(app) as client:
        await client.publish("orders", Order(id=1), key="k1")
        await client.wait_published("invoices")
    assert seen == [(seen[0][0], 1, "k1")]
    assert seen[0][0].startswith("unimq-orders")


async def test_payload_kinds_bytes_text_json_and_message() -> None:
    app = App()

    @app.subscriber("raw")
    async def raw(body: bytes) -> None: ...

    @app.subscriber("text")
    async def text(body: str, message: unimq.Message) -> None: ...

    @app.subscriber("json")
    async def as_json(body: dict[str, int]) -> None: ...

    @app.subscriber("nothing")
    async def nothing() -> str:
        return "done"

    async with TestApp(app) as client:
        await client.publish("raw", b"\x00\x01")
        await client.publish("text", "héllo", headers={"h": "v"})
        await client.publish("json", {"a": 1})
        await client.publish("nothing", b"")
        assert (await client.wait_for(raw))[0].payload == b"\x00\x01"
        assert (await client.wait_for(text))[0].message.headers["h"] == "v"
        assert (await client.wait_for(as_json))[0].payload == {"a": 1}
        assert (await client.wait_for(nothing))[0].result == "done"
    assert [c.error for c in client.calls()] == [None] * 4


async def test_failures_are_retried_then_dead_lettered_by_the_runner() -> None:
    app = App()
    attempts: list[int] = []

    @app.subscriber("flaky", schema=Order, retry=FAST)
    async def flaky(order: Order, delivery: unimq.Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt < 2:
            raise RuntimeError("once")

    @app.subscriber("poison", schema=Order, retry=FAST)
    async def poison(order: Order) -> None:
        raise ValueError(f"bad order {order.id}")

    async with TestApp(app) as client:
        await client.publish("flaky", Order(id=1))
        await client.publish("poison", Order(id=2))
        await client.wait_for(flaky, count=2)
        calls = await client.wait_for(poison, count=3)
        async with client.broker.consumer(client.broker.dead_letter_destination("poison")) as dlq:
            dead = await dlq.receive(timeout=5)
        assert dead is not None
    assert attempts == [1, 2]
    assert all(isinstance(c.error, ValueError) for c in calls)
    assert "bad order 2" in str(dead.message.headers)


async def test_an_invalid_payload_is_dead_lettered_without_calling_the_handler() -> None:
    app = App()

    @app.subscriber("orders", schema=Order)
    async def bill(order: Order) -> None: ...

    async with TestApp(app) as client:
        await client.publish("orders", b'{"id": "not a number"}')
        async with client.broker.consumer(client.broker.dead_letter_destination("orders")) as dlq:
            dead = await dlq.receive(timeout=5)
        assert dead is not None and dead.message.body == b'{"id": "not a number"}'
        assert client.calls(bill) == []


async def test_hooks_run_in_order_around_the_subscribers() -> None:
    app = App()
    events: list[str] = []

    @app.on_startup
    async def connect_db() -> None:
        events.append(f"startup running={app.running}")

    @app.on_shutdown
    def close_db() -> None:
        events.append("shutdown")

    @app.subscriber("orders", schema=Order)
    async def bill(order: Order) -> None:
        events.append(f"order {order.id}")

    async with TestApp(app) as client:
        await client.publish("orders", Order(id=3))
        await client.wait_for(bill)
    assert events == ["startup running=True", "order 3", "shutdown"]
    assert not app.running


async def test_routers_split_an_app_across_modules() -> None:
    billing = Router(prefix="billing.")
    shipping = Router()
    hooks: list[str] = []

    @billing.subscriber("orders", group="billing", schema=Order)
    @billing.publisher("invoices")
    async def bill(order: Order) -> Invoice:
        return Invoice(order_id=order.id, total=1)

    @shipping.subscriber("billing.invoices", group="shipping")
    async def ship(invoice: Invoice) -> None: ...

    @shipping.on_startup
    def started() -> None:
        hooks.append("shipping")

    app = App()
    app.include_router(billing)
    app.include_router(shipping)
    assert [s.destination for s in app.subscribers()] == ["billing.orders", "billing.invoices"]
    async with TestApp(app) as client:
        await client.publish("billing.orders", Order(id=5))
        [call] = await client.wait_for(ship)
    assert call.payload == Invoice(order_id=5, total=1)
    assert hooks == ["shipping"]


async def test_publisher_above_or_below_the_subscriber_decorator() -> None:
    app = App()

    @app.publisher("a")
    @app.subscriber("in-1")
    async def first(body: bytes) -> bytes:
        return body

    @app.subscriber("in-2", publish_to=["b", "c"])
    @app.publisher("a")
    async def second(body: bytes) -> bytes:
        return body

    assert [[p.destination for p in s.publishers] for s in app.subscribers()] == [["a"], ["b", "c", "a"]]
    async with TestApp(app) as client:
        await client.publish("in-1", b"1")
        await client.publish("in-2", b"2")
        assert sorted(m.body for m in await client.wait_published("a", 2)) == [b"1", b"2"]
        assert [m.body for m in await client.wait_published("c")] == [b"2"]


async def test_concurrent_stops_run_the_shutdown_hooks_once() -> None:
    app = App()
    stops: list[int] = []
    app.on_shutdown(lambda: stops.append(1))
    await app.start()
    await asyncio.gather(app.stop(), app.stop())
    assert stops == [1] and not app.running


async def test_a_standalone_publisher_sends_through_the_running_app() -> None:
    app = App()
    audit = app.publisher("audit", schema=Order)

    @app.subscriber("audit", schema=Order)
    async def record(order: Order) -> None: ...

    with pytest.raises(ConfigError, match="not running"):
        await audit.send(Order(id=1))
    async with TestApp(app) as client:
        await audit.send({"id": 9})
        [call] = await client.wait_for(record)
    assert call.payload == Order(id=9)


class Tagging(Middleware):
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    async def consume(self, delivery, call_next):  # type: ignore[no-untyped-def]
        self.log.append(f"{self.name} in {delivery.message.headers.get('tag')}")
        result = await call_next(delivery)
        self.log.append(f"{self.name} out {result}")
        return result

    async def publish(self, destination, message, call_next):  # type: ignore[no-untyped-def]
        message.headers["tag"] = f"{self.name}:{destination}"
        return await call_next(destination, message)


async def test_middlewares_wrap_every_handler_and_publish_outermost_first() -> None:
    log: list[str] = []
    app = App(middlewares=[Tagging(log, "a"), Tagging(log, "b")])

    @app.subscriber("orders", schema=Order)
    async def bill(order: Order) -> int:
        log.append("handler")
        return order.id

    async with TestApp(app) as client:
        await client.publish("orders", Order(id=4))
        await client.wait_for(bill)
    # Publish: a then b set the header (b, innermost, last); consume: a outermost.
    assert log == ["a in b:orders", "b in b:orders", "handler", "b out 4", "a out 4"]


async def test_stop_lets_in_flight_handlers_finish_and_acks_them() -> None:
    app = App(shutdown_timeout=5)
    started, finished = asyncio.Event(), []

    @app.subscriber("slow", group="g", schema=Order)
    async def slow(order: Order) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(order.id)

    broker = await unimq.connect("memory://app-graceful")
    try:
        await broker.ensure("slow", groups=("g",))
        await broker.producer("slow", schema=Order).send(Order(id=1))
        given = App(broker, shutdown_timeout=5)
        given.include_router(app)
        await given.start()
        await asyncio.wait_for(started.wait(), 5)
        await given.stop()
        assert finished == [1]
        assert not broker.closed  # a broker given to the app stays open
        stats = await broker.stats("slow", "g")
        assert stats.depth == 0 and stats.in_flight == 0
    finally:
        await broker.close()


async def test_run_stops_on_the_event() -> None:
    app = App("memory://")

    @app.subscriber("orders", schema=Order)
    async def bill(order: Order) -> None: ...

    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop=stop))
    await asyncio.sleep(0.1)
    assert app.running
    stop.set()
    await asyncio.wait_for(runner, 5)
    assert not app.running


async def test_a_subscriber_the_runner_refuses_fails_start_and_nothing_stays_open() -> None:
    app = App("memory://")

    @app.subscriber("orders", schema=Order, lock_timeout=-1)
    async def bill(order: Order) -> None: ...

    with pytest.raises(ConfigError, match="lock_timeout"):
        await app.start()
    assert not app.running


# Bad input: one-line ConfigErrors at declaration time.


def test_two_subscribers_for_one_destination_and_group() -> None:
    app = App()

    @app.subscriber("orders", group="billing")
    async def one(body: bytes) -> None: ...

    with pytest.raises(ConfigError, match=r"two subscribers for 'orders/billing': .*one and .*two"):
        @app.subscriber("orders", group="billing")
        async def two(body: bytes) -> None: ...

    other = Router()

    @other.subscriber("orders", group="billing")
    async def three(body: bytes) -> None: ...

    with pytest.raises(ConfigError, match="two subscribers"):
        app.include_router(other)

    @app.subscriber("orders", group="audit")  # another group is fine
    async def four(body: bytes) -> None: ...


def test_a_handler_typed_with_another_model_than_the_schema() -> None:
    app = App()
    with pytest.raises(ConfigError, match=r"typed Invoice but the subscriber declares schema=Order"):
        @app.subscriber("orders", schema=Order)
        async def bill(invoice: Invoice) -> None: ...


@pytest.mark.parametrize(("options", "match"), [
    ({"concurrency": 0}, "concurrency must be an integer >= 1"),
    ({"no_such_option": 1}, "unknown option 'no_such_option'"),
])
def test_bad_subscriber_options(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        App().subscriber("orders", **options)  # type: ignore[arg-type]


def test_a_handler_with_parameters_unimq_cannot_fill() -> None:
    app = App()
    with pytest.raises(ConfigError, match="parameter 'db' unimq cannot fill"):
        @app.subscriber("orders")
        async def bill(body: bytes, db: object) -> None: ...
    with pytest.raises(ConfigError, match="typed int"):
        @app.subscriber("orders")
        async def count(body: int) -> None: ...


async def test_runner_options_pass_through_to_consume() -> None:
    app = App()

    @app.subscriber("orders", schema=Order, prefetch=1, lock_timeout=timedelta(seconds=5))
    async def bill(order: Order) -> None: ...

    assert app.subscribers()[0].options == {"prefetch": 1, "lock_timeout": timedelta(seconds=5)}
    async with TestApp(app) as client:
        await client.publish("orders", Order(id=1))
        await client.wait_for(bill)


async def test_publishing_before_start_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not running"):
        await App().publish("orders", b"x")
