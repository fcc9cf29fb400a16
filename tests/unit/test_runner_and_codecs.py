"""The handler runner (retries, backoff bounds, dead-lettering, shutdown) and the codecs."""

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

import unimq
from unimq import codecs
from unimq.codecs import Compressed, JsonCodec, decompress
from unimq.reliability import DEAD_LETTER_REASON, DedupWindow

FAST = unimq.Retry(max_attempts=3, initial=timedelta(milliseconds=10), max_delay=timedelta(milliseconds=40))


@pytest.fixture
async def broker():
    async with unimq.connect(f"memory://runner-{uuid.uuid4().hex[:6]}") as b:
        yield b


def test_backoff_bounds() -> None:
    retry = unimq.Retry(initial=timedelta(seconds=1), max_delay=timedelta(seconds=10), multiplier=3)
    assert [retry.ceiling(n) for n in (1, 2, 3, 4)] == [1, 3, 9, 10]
    assert all(0 <= retry.backoff(n) <= retry.ceiling(n) for n in range(1, 8) for _ in range(50))
    assert len({retry.backoff(3) for _ in range(20)}) > 1  # jittered
    with pytest.raises(unimq.ConfigError, match="max_attempts"):
        unimq.Retry(max_attempts=0)


async def test_retry_then_success_and_dead_letter(broker: unimq.Broker) -> None:
    await broker.producer("jobs").send_many([b"flaky", b"poison", b"fine"])
    attempts: dict[bytes, list[int]] = {}
    stop = asyncio.Event()

    async def handler(d: unimq.Delivery) -> None:
        attempts.setdefault(d.message.body, []).append(d.attempt)
        try:
            if d.message.body == b"poison" or (d.message.body == b"flaky" and d.attempt < 3):
                raise RuntimeError(f"boom {d.attempt}")
        finally:
            if sum(map(len, attempts.values())) == 7:
                stop.set()

    await asyncio.wait_for(broker.consume("jobs", handler, retry=FAST, concurrency=2, stop=stop), 5)
    assert attempts == {b"flaky": [1, 2, 3], b"poison": [1, 2, 3], b"fine": [1]}
    async with broker.consumer("jobs.dlq") as dlq:
        dead = await dlq.receive(timeout=1)
    assert dead is not None and dead.message.body == b"poison"
    assert dead.message.headers[DEAD_LETTER_REASON] == "RuntimeError: boom 3 (attempt 3)"
    assert (await broker.stats("jobs")).depth == 0


async def test_concurrency_runs_in_parallel(broker: unimq.Broker) -> None:
    await broker.producer("par").send_many([b"x"] * 8)
    running, peak, done = 0, 0, 0
    stop = asyncio.Event()

    async def handler(d: unimq.Delivery) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        done += 1
        if done == 8:
            stop.set()

    await asyncio.wait_for(broker.consume("par", handler, concurrency=4, stop=stop), 5)
    assert peak == 4


async def test_shutdown_with_in_flight_work_loses_nothing(broker: unimq.Broker) -> None:
    await broker.producer("sd").send_many([str(i).encode() for i in range(6)])
    finished: list[bytes] = []
    started = asyncio.Event()

    async def slow(d: unimq.Delivery) -> None:
        started.set()
        await asyncio.sleep(0.2 if d.message.body in (b"0", b"1") else 30)
        finished.append(d.message.body)

    task = asyncio.create_task(broker.consume("sd", slow, concurrency=3, shutdown_timeout=0.5))
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with broker.consumer("sd") as c:
        rest = [d.message.body for d in await c.receive_many(10, timeout=0.3)]
    assert sorted(finished + rest) == [str(i).encode() for i in range(6)]
    assert set(finished).isdisjoint(rest)


class Order(BaseModel):
    id: int


async def test_schema_and_compression_round_trip(broker: unimq.Broker) -> None:
    await broker.producer("typed", schema=Order).send(Order(id=5))
    await broker.producer("typed", codec=Compressed(JsonCodec(), "gzip")).send({"id": 6})
    await broker.producer("typed").send(b"{broken")
    async with broker.consumer("typed", schema=Order) as c:
        got = [d.payload for d in await c.receive_many(3, timeout=0.3)]
    assert got == [Order(id=5), Order(id=6)]
    async with broker.consumer("typed.dlq") as dlq:
        dead = await dlq.receive(timeout=1)
    assert dead is not None and "failed to decode" in dead.message.headers[DEAD_LETTER_REASON]


def test_zstd_and_no_pickle() -> None:
    codec = Compressed(JsonCodec(), "zstd")
    assert codec.decode(decompress(codec.encode([1, "a"]), "zstd")) == [1, "a"]
    assert "import pickle" not in Path(codecs.__file__).read_text()


def test_dedup_window_is_bounded() -> None:
    window = DedupWindow(10, max_entries=3)
    assert [window.seen(i, now=0) for i in "abca"] == [False, False, False, True]
    window.seen("d", now=1)
    assert len(window) == 3 and not window.seen("a", now=1)  # "a" fell out by count
    assert not window.seen("b", now=20)  # and by age
