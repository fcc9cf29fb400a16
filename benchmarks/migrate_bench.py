"""Migration throughput: ``DualProducer`` (dual-publish) and ``Mirror`` between two backends.

For a pair (source → target), interleaved repetitions, median:

- dual-publish: ``DualProducer(old, new).send_many`` vs ``send_many`` to each side alone; the bar is
  the slower single side (a dual send waits for both);
- mirror: ``Mirror(source, target).run`` over a pre-filled source vs consuming the source alone and
  ``send_many`` to the target alone; the bar is ≥ 0.8 × the slower of the two.

    .venv/bin/python benchmarks/migrate_bench.py [--quick] [--pair redis,nats] [--pair rabbitmq,kafka]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from harness import payloads

import unimq
from unimq.migrate import DualProducer, Mirror

URLS = {
    "memory": "memory://bench-migrate?lock_timeout=60",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "kafka": "kafka://127.0.0.1:9092",
    "sqs": "sqs://?endpoint_url=http://127.0.0.1:9324&region=us-east-1",
}
CHUNK = 1000
MIRROR_GROUP = "unimq-mirror"


@dataclass
class PairResult:
    source: str
    target: str
    count: int
    size: int
    rates: dict[str, list[float]] = field(default_factory=dict)
    medians: dict[str, float] = field(default_factory=dict)
    dual_ratio: float | None = None
    mirror_ratio: float | None = None


def _dest() -> str:
    return f"bench-mig-{uuid.uuid4().hex[:10]}"


async def _ensure(broker: unimq.Broker, dest: str) -> str | None:
    group = MIRROR_GROUP if broker.capabilities_for(dest).fanout else None
    await broker.ensure(dest, groups=(group,) if group else ())
    return group


async def _send(producer: Any, bodies: list[bytes]) -> None:
    for i in range(0, len(bodies), CHUNK):
        await producer.send_many(bodies[i:i + CHUNK])


async def _timed(coro: Any, count: int) -> float:
    started = time.perf_counter()
    await coro
    return count / (time.perf_counter() - started)


async def produce_alone(broker: unimq.Broker, bodies: list[bytes]) -> float:
    dest = _dest()
    await _ensure(broker, dest)
    try:
        return await _timed(_send(broker.producer(dest), bodies), len(bodies))
    finally:
        await broker.delete(dest)


async def consume_alone(broker: unimq.Broker, bodies: list[bytes]) -> float:
    dest = _dest()
    group = await _ensure(broker, dest)
    try:
        await _send(broker.producer(dest), bodies)

        async def read() -> None:
            left = len(bodies)
            async with broker.consumer(dest, group, prefetch=200) as consumer:
                while left:
                    delivery = await consumer.receive(timeout=10)
                    if delivery is None:
                        raise TimeoutError(f"{broker.backend}: consumer starved with {left} left")
                    await delivery.ack()
                    left -= 1

        return await _timed(read(), len(bodies))
    finally:
        await broker.delete(dest)


async def dual(old: unimq.Broker, new: unimq.Broker, bodies: list[bytes]) -> float:
    a, b = _dest(), _dest()
    await _ensure(old, a)
    await _ensure(new, b)
    try:
        return await _timed(_send(DualProducer(old.producer(a), new.producer(b)), bodies), len(bodies))
    finally:
        await old.delete(a)
        await new.delete(b)


async def mirror(source: unimq.Broker, target: unimq.Broker, bodies: list[bytes]) -> float:
    a, b = _dest(), _dest()
    await _ensure(source, a)
    await _ensure(target, b)
    try:
        await _send(source.producer(a), bodies)
        stop = asyncio.Event()

        def progress(stats: Any) -> None:
            if stats.forwarded >= len(bodies):
                stop.set()

        m = Mirror(source, a, target, b, group=MIRROR_GROUP)
        return await _timed(asyncio.wait_for(m.run(stop=stop, on_batch=progress), 300), len(bodies))
    finally:
        await source.delete(a)
        await target.delete(b)


async def run_pair(source: str, target: str, count: int, size: int, repeat: int) -> PairResult:
    result = PairResult(source, target, count, size)
    bodies = payloads(size, count)
    async with unimq.connect(URLS[source]) as src, unimq.connect(URLS[target]) as dst:
        runs = {
            f"produce {source}": lambda: produce_alone(src, bodies),
            f"produce {target}": lambda: produce_alone(dst, bodies),
            "dual-publish": lambda: dual(src, dst, bodies),
            f"consume {source}": lambda: consume_alone(src, bodies),
            "mirror": lambda: mirror(src, dst, bodies),
        }
        result.rates = {name: [] for name in runs}
        for rep in range(repeat):
            order = list(runs) if rep % 2 == 0 else list(reversed(runs))
            for name in order:
                result.rates[name].append(await runs[name]())
        result.medians = {k: round(statistics.median(v)) for k, v in result.rates.items()}
    m = result.medians
    result.dual_ratio = round(m["dual-publish"] / min(m[f"produce {source}"], m[f"produce {target}"]), 3)
    result.mirror_ratio = round(m["mirror"] / min(m[f"consume {source}"], m[f"produce {target}"]), 3)
    return result


async def run(pairs: list[tuple[str, str]], count: int, size: int, repeat: int) -> list[dict[str, Any]]:
    out = []
    for source, target in pairs:
        try:
            r = await run_pair(source, target, count, size, repeat)
            print(f"{source}→{target}: {r.medians} dual ×{r.dual_ratio} mirror ×{r.mirror_ratio}", flush=True)
            out.append(asdict(r))
        except Exception as exc:
            print(f"{source}→{target}: FAILED {type(exc).__name__}: {exc}", flush=True)
            out.append({"source": source, "target": target, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", help="source,target (default: redis,nats and rabbitmq,kafka)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    pairs = [tuple(p.split(",", 1)) for p in (args.pair or ["redis,nats", "rabbitmq,kafka"])]
    count = args.count or (2_000 if args.quick else 10_000)
    results = asyncio.run(run([(a, b) for a, b in pairs], count, args.size, max(5, args.repeat)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
