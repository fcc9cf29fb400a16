"""``unimq demo``: a small order pipeline that shows what the SDK does, on any backend.

Orders are sent as pydantic models; a handler runner processes them with concurrency 4. One order
fails twice and succeeds on its third attempt (retry with backoff); one can never succeed and is
dead-lettered with the exception as reason; one payload is not an order at all and is
dead-lettered by schema validation before any handler sees it.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import timedelta

from pydantic import BaseModel

import unimq
from unimq.errors import ConfigError
from unimq.message import Delivery
from unimq.reliability import DEAD_LETTER_REASON

FLAKY_ORDER = 7
BAD_ORDER = 13
#: The demo needs the flaky and the bad order; beyond this it only costs memory and time.
MIN_ORDERS, MAX_ORDERS = BAD_ORDER + 1, 100_000


class Order(BaseModel):
    id: int
    customer: str
    amount: float


class _Progress:
    """A one-line progress bar on a terminal; a few plain lines otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stdout.isatty()
        self.last = -1

    def show(self, done: int, note: str = "") -> None:
        if self.tty:
            filled = int(30 * done / self.total)
            bar = "#" * filled + "-" * (30 - filled)
            print(f"\r  [{bar}] {done}/{self.total} {note:<40}", end="", flush=True)
        elif done * 4 // self.total != self.last or done == self.total:
            self.last = done * 4 // self.total
            print(f"  processed {done}/{self.total} {note}")

    def end(self) -> None:
        if self.tty:
            print()


async def run_demo(url: str, orders: int) -> int:
    if not MIN_ORDERS <= orders <= MAX_ORDERS:
        raise ConfigError(f"demo: --orders must be {MIN_ORDERS} to {MAX_ORDERS} (order {FLAKY_ORDER} is the flaky "
                          f"one, order {BAD_ORDER} the one that never succeeds), got {orders}")
    destination = f"demo-orders-{uuid.uuid4().hex[:8]}"
    async with unimq.connect(url) as broker:
        print(f"unimq demo on {broker.url} ({broker.backend})")
        await broker.ensure(destination, dead_letter=True)
        producer = broker.producer(destination, schema=Order)
        started = time.perf_counter()
        await producer.send_many(Order(id=i, customer=f"customer-{i % 10}", amount=10.0 + i) for i in range(orders))
        await broker.producer(destination).send(b"this is not an order", content_type="text/plain")
        print(f"sent {orders} orders and 1 malformed message in {time.perf_counter() - started:.3f}s")

        done = asyncio.Event()
        processed: set[int] = set()
        attempts: dict[int, int] = {}
        progress = _Progress(orders - 1)
        retry = unimq.Retry(max_attempts=3, initial=timedelta(milliseconds=50), max_delay=timedelta(milliseconds=400))

        async def handle(delivery: Delivery) -> None:
            order: Order = delivery.payload
            attempts[order.id] = delivery.attempt
            try:
                if order.id == FLAKY_ORDER and delivery.attempt < 3:
                    progress.show(len(processed), f"order {order.id}: attempt {delivery.attempt} failed, retrying")
                    raise RuntimeError("payment service timed out")
                if order.id == BAD_ORDER:
                    raise ValueError(f"order {order.id}: customer account is closed")
                processed.add(order.id)
                progress.show(len(processed))
            finally:
                # Stop once every good order is done and the bad one had its last attempt.
                if len(processed) == orders - 1 and attempts.get(BAD_ORDER) == retry.max_attempts:
                    done.set()

        await asyncio.wait_for(
            broker.consume(destination, handle, schema=Order, concurrency=4, retry=retry, stop=done), timeout=120
        )
        progress.end()
        print(f"processed {len(processed)} orders in {time.perf_counter() - started:.3f}s; "
              f"order {FLAKY_ORDER} succeeded on attempt {attempts.get(FLAKY_ORDER)}")

        dead_letters = broker.consumer(broker.dead_letter_destination(destination))
        async with dead_letters:
            for delivery in await dead_letters.receive_many(2, timeout=10):
                print(f"dead-lettered {delivery.message.body[:40]!r}: "
                      f"{delivery.message.headers.get(DEAD_LETTER_REASON, '').splitlines()[0][:90]}")
                await delivery.ack()
        await broker.delete(destination)
    return 0
