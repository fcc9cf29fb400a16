"""Cost of exactly-once effect: the idempotency check per message, and the outbox relay's throughput.

    .venv/bin/python benchmarks/idempotency_bench.py [--brokers redis,rabbitmq] [--rows 2000]

1. ``store.once(key)`` per message, for a new key (claim + commit) and for a duplicate (claim
   answers "done"), with ``MemoryStore``, ``RedisStore`` (the Redis of ``scripts/brokers``) and
   ``SqlInbox`` on PostgreSQL (``scripts/brokers up postgres``; one transaction per message).
2. Relay throughput: ``--rows`` outbox rows already committed in PostgreSQL, drained by one relay
   into each broker (messages/s, batch 200). Sequential, single process, on this machine.
Runs well under a minute; prints a Markdown table (docs/exactly-once.md quotes one run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import unimq
from unimq.idempotency import MemoryStore, SqlInbox
from unimq.outbox import Outbox

POSTGRES = os.environ.get("UNIMQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5433/postgres")
BROKERS = {
    "redis": os.environ.get("UNIMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "rabbitmq": os.environ.get("UNIMQ_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    "kafka": os.environ.get("UNIMQ_TEST_KAFKA_URL", "kafka://127.0.0.1:9092"),
    "nats": os.environ.get("UNIMQ_TEST_NATS_URL", "nats://127.0.0.1:4222"),
}


async def per_message(store: Any, count: int) -> tuple[float, float]:
    """Microseconds per message: first sight of a key, then a duplicate of it."""
    keys = [uuid.uuid4().hex for _ in range(count)]
    started = time.perf_counter()
    for key in keys:
        async with store.once(key) as fresh:
            assert fresh
    fresh_us = (time.perf_counter() - started) / count * 1e6
    started = time.perf_counter()
    for key in keys:
        async with store.once(key) as fresh:
            assert not fresh
    return fresh_us, (time.perf_counter() - started) / count * 1e6


async def relay_throughput(engine: Any, url: str, rows: int) -> float:
    outbox = Outbox(engine, table=f"bench_outbox_{uuid.uuid4().hex[:8]}")
    await outbox.create_table()
    destination = f"bench-outbox-{uuid.uuid4().hex[:8]}"
    try:
        async with engine.begin() as conn:
            for i in range(rows):
                await outbox.send(conn, destination, unimq.Message(b"x" * 200, key=f"k{i % 16}"))
        async with unimq.connect(url) as broker:
            await broker.ensure(destination)
            started = time.perf_counter()
            relayed = await outbox.relay(broker, batch=200).drain()
            elapsed = time.perf_counter() - started
            assert relayed == rows, relayed
            await broker.delete(destination)
        return rows / elapsed
    finally:
        from sqlalchemy import text

        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {outbox.table}"))


async def main(args: argparse.Namespace) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine
    from unimq_redis.idempotency import RedisStore

    engine = create_async_engine(POSTGRES.replace("postgresql://", "postgresql+asyncpg://", 1))
    print("| idempotency store | new key (µs/msg) | duplicate (µs/msg) | messages |")
    print("|---|---:|---:|---:|")
    memory = await per_message(MemoryStore(), 20_000)
    print(f"| MemoryStore | {memory[0]:.1f} | {memory[1]:.1f} | 20000 |")
    redis = RedisStore(BROKERS["redis"], prefix=f"bench:once:{uuid.uuid4().hex}:")
    try:
        result = await per_message(redis, 2_000)
        print(f"| RedisStore (local Redis) | {result[0]:.0f} | {result[1]:.0f} | 2000 |")
    finally:
        await redis.close()
    inbox = SqlInbox(engine, table=f"bench_inbox_{uuid.uuid4().hex[:8]}")
    await inbox.create_table()
    result = await per_message(inbox, 1_000)
    print(f"| SqlInbox (local PostgreSQL, one transaction per message) | {result[0]:.0f} | {result[1]:.0f} | 1000 |")
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE {inbox.table}"))
    print()
    print("| outbox relay, PostgreSQL → | messages/s | rows |")
    print("|---|---:|---:|")
    for name in args.brokers.split(","):
        rate = await relay_throughput(engine, BROKERS[name], args.rows)
        print(f"| {name} | {rate:,.0f} | {args.rows} |")
    await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="redis,rabbitmq", help=f"comma-separated, of {', '.join(BROKERS)}")
    parser.add_argument("--rows", type=int, default=5000)
    asyncio.run(main(parser.parse_args()))
