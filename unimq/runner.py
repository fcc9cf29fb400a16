"""The handler runner behind ``Broker.consume``.

At-least-once: a message is acked only after its handler returns. A failing handler's message is
nacked with a backoff delay (broker-side when the backend has ``nack_delay``, so a crash loses
nothing) and dead-lettered with the exception as reason after ``retry.max_attempts``.

Shutdown (cancellation, ``stop`` set, or SIGTERM with ``handle_signals``): stop fetching, let
in-flight handlers finish within ``shutdown_timeout``, then cancel them and nack their messages.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from unimq import telemetry
from unimq.broker import Consumer
from unimq.errors import UnimqError
from unimq.message import Delivery
from unimq.reliability import Retry

log = logging.getLogger("unimq.runner")

Handler = Callable[[Delivery], Awaitable[Any] | Any]


async def run(
    consumer: Consumer,
    handler: Handler,
    *,
    concurrency: int,
    retry: Retry,
    shutdown_timeout: float,
    handle_signals: bool,
    stop: asyncio.Event | None,
) -> None:
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    stop = stop or asyncio.Event()
    nack_delay = bool(consumer._caps.nack_delay)
    slots = asyncio.Semaphore(concurrency)
    in_flight: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    async def process(delivery: Delivery) -> None:
        try:
            tel = telemetry.current
            if tel is None:
                result = handler(delivery)
                if inspect.isawaitable(result):
                    await result
            else:
                with tel.handling(consumer._broker.backend, consumer.destination, consumer.group, delivery):
                    result = handler(delivery)
                    if inspect.isawaitable(result):
                        await result
        except asyncio.CancelledError:
            await delivery.nack()
            raise
        except Exception as exc:
            await _settle(_failed(delivery, exc, retry, nack_delay), delivery)
        else:
            await _settle(delivery.ack(), delivery)
        finally:
            slots.release()

    async def fetch() -> None:
        while True:
            await slots.acquire()
            try:
                delivery = await consumer.receive(timeout=1.0)
            except BaseException:
                slots.release()
                raise
            if delivery is None:
                slots.release()
                continue
            task = asyncio.create_task(process(delivery))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

    async with consumer:
        fetcher = asyncio.create_task(fetch())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({fetcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Stop fetching (a receive is safe to cancel), then let in-flight handlers finish.
            stopper.cancel()
            fetcher.cancel()
            results = await asyncio.gather(fetcher, return_exceptions=True)
            await _drain(in_flight, shutdown_timeout)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        if isinstance(results[0], Exception):
            raise results[0]


async def _settle(settlement: Awaitable[None], delivery: Delivery) -> None:
    """A settlement that fails (typically: the connection dropped) is logged, not raised from a
    task nobody awaits; the unsettled message comes back after its lock timeout or reconnect."""
    try:
        await settlement
    except UnimqError as exc:
        log.warning("could not settle message %s; it will be redelivered: %s", delivery.message.message_id, exc,
                    extra={"message_id": delivery.message.message_id})


async def _drain(in_flight: set[asyncio.Task[None]], timeout: float) -> None:
    """Let running handlers finish; cancel (and so nack) the ones still running at the deadline."""
    if not in_flight:
        return
    _, pending = await asyncio.wait(set(in_flight), timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        log.warning("shutdown: %d handlers did not finish in %.1fs; their messages were nacked", len(pending), timeout)
        await asyncio.gather(*pending, return_exceptions=True)


async def _failed(delivery: Delivery, exc: Exception, retry: Retry, nack_delay: bool) -> None:
    message = delivery.message
    if delivery.attempt >= retry.max_attempts:
        reason = f"{type(exc).__name__}: {exc}"
        log.error("message %s failed %d times, dead-lettering: %s", message.message_id, delivery.attempt, reason,
                  extra={"message_id": message.message_id, "correlation_id": message.correlation_id})
        await delivery.reject(reason=reason)
        return
    delay = retry.backoff(delivery.attempt)
    if telemetry.current is not None:
        telemetry.current.retried.add(1, {"messaging.destination.name": delivery._bound().destination})
    log.info("message %s failed (attempt %d), retrying in %.2fs: %s: %s", message.message_id, delivery.attempt,
             delay, type(exc).__name__, exc,
             extra={"message_id": message.message_id, "correlation_id": message.correlation_id})
    if nack_delay:
        await delivery.nack(delay=delay)
    else:
        await asyncio.sleep(delay)
        await delivery.nack()
