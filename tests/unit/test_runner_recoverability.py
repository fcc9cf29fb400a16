"""The runner's recoverability on memory://: permanent failures, kill switch, lock renewal,
handler timeouts, sync handlers, signals and bad input."""

import asyncio
import itertools
import logging
import math
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import unimq
from unimq.idempotency import MemoryStore
from unimq.recoverability import HandlerTimeout, KillSwitch, Reject, SwitchState, SwitchTracker
from unimq.reliability import DEAD_LETTER_REASON

FAST = unimq.Retry(max_attempts=3, initial=0.01, max_delay=0.04)


@pytest.fixture
async def broker():
    async with unimq.connect(f"memory://recover-{uuid.uuid4().hex[:6]}") as b:
        yield b


async def run_until(broker: unimq.Broker, dest: str, handler: Callable[[unimq.Delivery], Any],
                    done: Callable[[], bool], limit: float = 5.0, **options: Any) -> None:
    """Run consume() until ``done()`` holds; fail after ``limit`` seconds."""
    stop = asyncio.Event()
    options.setdefault("handle_signals", False)
    task = asyncio.create_task(broker.consume(dest, handler, stop=stop, **options))
    deadline = time.monotonic() + limit
    while not done() and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert done(), "the runner did not get there in time"


async def dead(broker: unimq.Broker, dest: str, count: int = 1) -> list[unimq.Delivery]:
    async with broker.consumer(f"{dest}.dlq") as dlq:
        got = await dlq.receive_many(count + 1, timeout=0.3)
        for d in got:
            await d.ack()
    return got


# Permanent failures


async def test_reject_dead_letters_at_once_with_its_reason(broker: unimq.Broker) -> None:
    await broker.producer("rj").send(b"bad")
    attempts: list[int] = []

    async def handler(d: unimq.Delivery) -> None:
        attempts.append(d.attempt)
        raise Reject("order 7 refers to a deleted customer")

    await run_until(broker, "rj", handler, lambda: bool(attempts), retry=FAST)
    [dl] = await dead(broker, "rj")
    assert attempts == [1]
    assert dl.message.headers[DEAD_LETTER_REASON] == "order 7 refers to a deleted customer"


@pytest.mark.parametrize("rule", [(KeyError, ValueError), ValueError, lambda e: "never" in str(e)])
async def test_give_up_on_dead_letters_on_first_failure(broker: unimq.Broker, rule: Any) -> None:
    await broker.producer("gu").send_many([b"never", b"flaky"])
    attempts: Counter[bytes] = Counter()

    async def handler(d: unimq.Delivery) -> None:
        attempts[d.message.body] += 1
        if d.message.body == b"never":
            raise ValueError("never valid: token=s3cr3t")
        if d.attempt < 2:
            raise RuntimeError("blip")

    retry = unimq.Retry(max_attempts=3, initial=0.01, max_delay=0.02, give_up_on=rule)
    await run_until(broker, "gu", handler, lambda: attempts[b"flaky"] == 2 and attempts[b"never"] == 1, retry=retry)
    [dl] = await dead(broker, "gu")
    reason = dl.message.headers[DEAD_LETTER_REASON]
    assert reason == "ValueError: never valid: token=*** (attempt 1)"
    assert attempts == {b"never": 1, b"flaky": 2}


async def test_retry_on_retries_only_those(broker: unimq.Broker) -> None:
    await broker.producer("ro").send_many([b"timeout", b"type"])
    attempts: Counter[bytes] = Counter()

    async def handler(d: unimq.Delivery) -> None:
        attempts[d.message.body] += 1
        raise (TimeoutError("slow") if d.message.body == b"timeout" else TypeError("wrong"))

    retry = unimq.Retry(max_attempts=3, initial=0.01, max_delay=0.02, retry_on=(TimeoutError,))
    await run_until(broker, "ro", handler, lambda: sum(attempts.values()) == 4, retry=retry)
    reasons = sorted(d.message.headers[DEAD_LETTER_REASON] for d in await dead(broker, "ro", 2))
    assert attempts == {b"timeout": 3, b"type": 1}
    assert reasons == ["TimeoutError: slow (attempt 3)", "TypeError: wrong (attempt 1)"]


async def test_a_raising_predicate_is_logged_and_the_message_kept(broker: unimq.Broker,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    await broker.producer("pr").send(b"x")
    attempts: list[int] = []

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("bug in the predicate")

    async def handler(d: unimq.Delivery) -> None:
        attempts.append(d.attempt)
        if d.attempt < 4:  # past max_attempts: a raising predicate never dead-letters
            raise ValueError("fails")

    retry = unimq.Retry(max_attempts=2, initial=0.01, max_delay=0.02, give_up_on=broken)
    with caplog.at_level(logging.ERROR, "unimq.runner"):
        await run_until(broker, "pr", handler, lambda: len(attempts) == 4, retry=retry)
    assert attempts == [1, 2, 3, 4]
    assert "predicate raised" in caplog.text
    assert await dead(broker, "pr", 0) == []


async def test_a_failing_dead_letter_nacks_instead(broker: unimq.Broker, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from unimq.settlement import Settlement

    real = Settlement.reject
    failures = [1]

    async def reject_once(self: Settlement, delivery: unimq.Delivery, reason: str) -> None:
        if failures:
            failures.pop()
            raise unimq.ConnectionError("dead-letter destination unreachable")
        await real(self, delivery, reason)

    monkeypatch.setattr(Settlement, "reject", reject_once)
    await broker.producer("dlf").send(b"x")
    attempts: list[int] = []

    async def handler(d: unimq.Delivery) -> None:
        attempts.append(d.attempt)
        raise Reject("no")

    with caplog.at_level(logging.ERROR, "unimq.runner"):
        await run_until(broker, "dlf", handler, lambda: len(attempts) == 2, retry=FAST)
    [dl] = await dead(broker, "dlf")
    assert dl.message.headers[DEAD_LETTER_REASON] == "no"
    assert "could not dead-letter" in caplog.text


async def test_immediate_retries_run_in_place_before_delayed_ones(broker: unimq.Broker) -> None:
    await broker.producer("im").send(b"x")
    attempts: list[int] = []

    async def handler(d: unimq.Delivery) -> None:
        attempts.append(d.attempt)
        raise RuntimeError("down")

    retry = unimq.Retry(max_attempts=2, immediate=2, initial=0.01, max_delay=0.02)
    await run_until(broker, "im", handler, lambda: len(attempts) == 6, retry=retry)
    assert attempts == [1, 1, 1, 2, 2, 2]
    [dl] = await dead(broker, "im")
    assert dl.message.headers[DEAD_LETTER_REASON] == "RuntimeError: down (attempt 2)"


# Handler timeouts and sync handlers


async def test_handler_timeout_is_a_retryable_failure(broker: unimq.Broker) -> None:
    await broker.producer("to").send_many([b"slow-once", b"always-slow"])
    attempts: Counter[bytes] = Counter()
    done: list[bytes] = []

    async def handler(d: unimq.Delivery) -> None:
        attempts[d.message.body] += 1
        if d.message.body == b"always-slow" or d.attempt == 1:
            await asyncio.sleep(10)
        done.append(d.message.body)

    await run_until(broker, "to", handler, lambda: bool(done) and attempts[b"always-slow"] == 3,
                    retry=FAST, handler_timeout=0.1, concurrency=2)
    assert done == [b"slow-once"] and attempts[b"slow-once"] == 2
    [dl] = await dead(broker, "to")
    assert dl.message.headers[DEAD_LETTER_REASON] == (
        "HandlerTimeout: the handler ran longer than handler_timeout=0.1s (attempt 3)")
    assert issubclass(HandlerTimeout, unimq.Timeout)


async def test_a_timeout_raised_inside_the_handler_is_not_a_handler_timeout(broker: unimq.Broker) -> None:
    await broker.producer("ti").send(b"x")

    seen: list[int] = []

    async def handler(d: unimq.Delivery) -> None:
        seen.append(d.attempt)
        raise TimeoutError("the database timed out")

    await run_until(broker, "ti", handler, lambda: bool(seen), retry=unimq.Retry(max_attempts=1), handler_timeout=5)
    [dl] = await dead(broker, "ti")
    assert dl.message.headers[DEAD_LETTER_REASON] == "TimeoutError: the database timed out (attempt 1)"


async def test_sync_handlers_run_in_threads_bounded_by_concurrency(broker: unimq.Broker) -> None:
    await broker.producer("sync").send_many([b"x"] * 8)
    threads: set[str] = set()
    running = peak = 0
    lock = threading.Lock()
    done: list[int] = []

    def handler(d: unimq.Delivery) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.current_thread().name)
        time.sleep(0.25)
        with lock:
            running -= 1
            done.append(1)

    ticks = 0

    async def ticker() -> None:  # the event loop keeps running while the handlers sleep
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    await run_until(broker, "sync", handler, lambda: len(done) == 8, concurrency=4)
    elapsed = time.monotonic() - started
    tick.cancel()
    assert elapsed < 1.2, f"8 × 0.25 s at concurrency=4 took {elapsed:.2f}s"
    assert peak == 4 and threading.main_thread().name not in threads
    assert ticks > 20, "the event loop was blocked"
    assert (await broker.stats("sync")).depth == 0


# Lock renewal


async def test_lock_is_renewed_while_a_long_handler_runs(broker: unimq.Broker) -> None:
    await broker.producer("lk").send(b"long")
    deliveries: list[int] = []
    done: list[int] = []

    async def handler(d: unimq.Delivery) -> None:
        deliveries.append(d.attempt)
        await asyncio.sleep(1.5)  # three 0.5 s locks
        done.append(1)

    await run_until(broker, "lk", handler, lambda: bool(done), concurrency=2, lock_timeout=0.5)
    await asyncio.sleep(0.6)
    assert deliveries == [1]
    assert (await broker.stats("lk")).depth == 0


async def test_lock_renewal_stops_at_max_lock_renewal(broker: unimq.Broker, caplog: pytest.LogCaptureFixture) -> None:
    await broker.producer("mx").send(b"long")
    deliveries: list[int] = []

    async def handler(d: unimq.Delivery) -> None:
        deliveries.append(d.attempt)
        await asyncio.sleep(1.6 if d.attempt == 1 else 0)

    with caplog.at_level(logging.WARNING, "unimq.runner"):
        await run_until(broker, "mx", handler, lambda: len(deliveries) == 2, concurrency=2, lock_timeout=0.4,
                        max_lock_renewal=0.5)
    assert deliveries == [1, 2]
    assert "max_lock_renewal" in caplog.text


# Kill switch


def test_switch_tracker_trips_on_the_ratio_after_activation() -> None:
    tracker = SwitchTracker(KillSwitch(activation=4, trip=0.5, restart=1, window=10))
    assert not tracker.record(True, now=0)  # below activation
    assert not tracker.record(False, now=1)
    assert not tracker.record(False, now=2)
    assert tracker.record(True, now=3)  # 2 of 4
    assert tracker.state is SwitchState.TRIPPED
    assert tracker.pause_left(now=3.5) == 0.5
    tracker.probe()
    tracker.recovered()
    assert tracker.state is SwitchState.RUNNING and tracker.ratio == 0


def test_switch_tracker_forgets_outcomes_older_than_the_window() -> None:
    tracker = SwitchTracker(KillSwitch(activation=2, trip=1.0, restart=1, window=5))
    assert not tracker.record(True, now=0)
    assert not tracker.record(False, now=1)
    assert not tracker.record(True, now=7)  # both old outcomes left the window: 1 of 1 < activation
    assert tracker.record(True, now=8)


async def test_kill_switch_pauses_then_probes_and_loses_nothing(broker: unimq.Broker,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    sent = [str(i).encode() for i in range(30)]
    await broker.producer("ks").send_many(sent)
    down = True
    calls: list[tuple[float, bytes, bool]] = []
    processed: set[bytes] = set()

    async def handler(d: unimq.Delivery) -> None:
        calls.append((time.monotonic(), d.message.body, down))
        await asyncio.sleep(0.01)
        if down:
            raise ConnectionRefusedError("downstream is down")
        processed.add(d.message.body)

    async def outage() -> None:
        nonlocal down
        await asyncio.sleep(1.5)
        down = False

    healer = asyncio.create_task(outage())
    switch = KillSwitch(activation=4, trip=0.5, restart=0.6, window=5)
    retry = unimq.Retry(max_attempts=2, initial=0.01, max_delay=0.02)
    with caplog.at_level(logging.INFO, "unimq.runner"):
        await run_until(broker, "ks", handler, lambda: processed == set(sent), limit=10, retry=retry,
                        kill_switch=switch, concurrency=2)
    await healer
    assert await dead(broker, "ks", 0) == [], "the outage dead-lettered messages"
    failures = [c for c in calls if c[2]]
    # After the trip (4 failures with concurrency 2: at most 2 more in flight) only single probes ran.
    assert len(failures) < 4 + 2 + 3, f"{len(failures)} handler runs failed during a 1.5 s outage"
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(failures)]
    assert max(gaps) >= 0.5, "no pause between failures"
    assert "tripped" in caplog.text and "probing" in caplog.text and "the probe succeeded" in caplog.text


def test_kill_switch_and_retry_validate_their_fields() -> None:
    bad: list[tuple[Callable[[], object], str]] = [
        (lambda: KillSwitch(activation=0), "KillSwitch.activation"),
        (lambda: KillSwitch(trip=0), "KillSwitch.trip"),
        (lambda: KillSwitch(trip=1.5), "KillSwitch.trip"),
        (lambda: KillSwitch(trip=math.nan), "KillSwitch.trip"),
        (lambda: KillSwitch(restart=-1), "KillSwitch.restart"),
        (lambda: KillSwitch(restart=0), "KillSwitch.restart"),
        (lambda: KillSwitch(window=timedelta(0)), "KillSwitch.window"),
        (lambda: KillSwitch(window=math.inf), "KillSwitch.window"),
        (lambda: unimq.Retry(initial=-0.1), "Retry.initial"),
        (lambda: unimq.Retry(max_delay=math.nan), "Retry.max_delay"),
        (lambda: unimq.Retry(max_attempts=0), "Retry.max_attempts"),
        (lambda: unimq.Retry(immediate=-1), "Retry.immediate"),
        (lambda: unimq.Retry(multiplier=math.inf), "Retry.multiplier"),
        (lambda: unimq.Retry(give_up_on="ValueError"), "Retry.give_up_on"),  # type: ignore[arg-type]
    ]
    for make, field in bad:
        with pytest.raises(unimq.ConfigError, match=field.replace(".", r"\.")):
            make()
    assert KillSwitch(trip=1, restart=timedelta(seconds=2)).restart_seconds == 2
    retry = unimq.Retry(initial=1, max_delay=timedelta(seconds=3), jitter=False)
    assert [retry.backoff(n) for n in (1, 2, 3)] == [1, 2, 3]


@pytest.mark.parametrize(("option", "field"), [
    ({"handler_timeout": -1}, "handler_timeout"), ({"handler_timeout": 0}, "handler_timeout"),
    ({"handler_timeout": math.nan}, "handler_timeout"), ({"max_lock_renewal": math.inf}, "max_lock_renewal"),
    ({"shutdown_timeout": -1}, "shutdown_timeout"), ({"concurrency": 0}, "concurrency"),
    ({"kill_switch": 0.15}, "kill_switch"), ({"retry": 3}, "retry"),
])
async def test_consume_validates_its_options(broker: unimq.Broker, option: dict[str, Any], field: str) -> None:
    async def handler(d: unimq.Delivery) -> None: ...

    with pytest.raises(unimq.ConfigError, match=field):
        await asyncio.wait_for(broker.consume("v", handler, **option), 2)


# Signals and idempotency


async def test_sigterm_stops_consume_gracefully_by_default_in_the_main_thread(broker: unimq.Broker) -> None:
    assert threading.current_thread() is threading.main_thread()
    await broker.producer("sig").send(b"x")
    finished: list[bytes] = []

    async def handler(d: unimq.Delivery) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.2)  # in flight when the signal arrives: finishes, then consume returns
        finished.append(d.message.body)

    await asyncio.wait_for(broker.consume("sig", handler), 5)
    assert finished == [b"x"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert (await broker.stats("sig")).depth == 0


async def test_signals_are_left_alone_off_the_main_thread() -> None:
    result: list[object] = []

    def in_thread() -> None:
        async def main() -> None:
            async with unimq.connect(f"memory://sig-{uuid.uuid4().hex[:6]}") as b:
                stop = asyncio.Event()
                stop.set()
                await b.consume("q", lambda d: None, stop=stop)
                with pytest.raises(unimq.ConfigError, match="main thread"):
                    await b.consume("q", lambda d: None, stop=stop, handle_signals=True)
            result.append("ok")

        asyncio.run(main())

    thread = threading.Thread(target=in_thread)
    thread.start()
    await asyncio.to_thread(thread.join, 5)
    assert result == ["ok"]


async def test_idempotency_processes_a_duplicate_once(broker: unimq.Broker) -> None:
    await broker.producer("idem").send_many([unimq.Message(b"a", message_id="m1"), unimq.Message(b"a", message_id="m1"),
                                             unimq.Message(b"b", message_id="m2")])
    effects: list[bytes] = []
    acked: list[int] = []

    def handler(d: unimq.Delivery) -> None:  # a sync handler under the idempotency wrapper
        effects.append(d.message.body)

    stop = asyncio.Event()
    task = asyncio.create_task(broker.consume("idem", handler, stop=stop, idempotency=MemoryStore()))
    for _ in range(200):
        if (await broker.stats("idem")).depth == 0 and (await broker.stats("idem")).in_flight == 0:
            acked.append(1)
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert acked and sorted(effects) == [b"a", b"b"]


async def test_warns_once_when_a_handler_outlives_a_lock_it_cannot_extend(
    broker: unimq.Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from unimq.capabilities import none

    caps = broker.capabilities_for("nx").model_copy(update={"lock_extension": none()})
    monkeypatch.setattr(broker, "capabilities_for", lambda destination: caps)
    await broker.producer("nx").send_many([b"a", b"b"])
    done: list[bytes] = []

    async def handler(d: unimq.Delivery) -> None:
        await asyncio.sleep(0.4)
        done.append(d.message.body)

    with caplog.at_level(logging.WARNING, "unimq.runner"):
        await run_until(broker, "nx", handler, lambda: len(done) >= 2, lock_timeout=0.2, concurrency=2)
    warnings = [r for r in caplog.records if "cannot extend locks" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


async def test_kill_switch_changes_are_exported_through_telemetry(broker: unimq.Broker) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from unimq import telemetry

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.enable(tracer_provider, MeterProvider(metric_readers=[reader]))
    try:
        await broker.producer("tel").send_many([b"a", b"b", b"c"])
        calls: list[int] = []
        done: set[bytes] = set()

        async def handler(d: unimq.Delivery) -> None:
            calls.append(1)
            if len(calls) <= 2:
                raise ConnectionRefusedError("down")
            done.add(d.message.body)

        await run_until(broker, "tel", handler, lambda: len(done) == 3, retry=FAST,
                        kill_switch=KillSwitch(activation=2, trip=1, restart=0.2))
        states: Counter[str] = Counter()
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == "unimq.kill_switch.changes":
                        for point in m.data.data_points:
                            states[str(point.attributes["unimq.kill_switch.state"])] += int(point.value)
        assert states == {"tripped": 1, "probing": 1, "running": 1}
        events = [e.name for s in exporter.get_finished_spans() if s.name == "kill_switch tel" for e in s.events]
        assert events == ["unimq.kill_switch.tripped", "unimq.kill_switch.probing", "unimq.kill_switch.running"]
    finally:
        telemetry.disable()
