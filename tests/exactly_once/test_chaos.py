"""The outbox chaos test: business transactions (some rolled back) write orders and their messages
in PostgreSQL; the relay runs as its own process (``unimq outbox relay``) to a private Redis; the
relay is SIGKILLed and restarted mid-relay, and the broker stopped for a burst of transactions
and started again. A consumer with the SQL
inbox applies the effects. Every committed transaction's message takes effect exactly once; no
rolled-back one does.

The broker is a Redis of our own on a free port (``scripts/brokers``' Redis class, append-only
file), restarted the way ``scripts/brokers restart`` does; the shared brokers are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from conftest import free_port, scripts_brokers

import unimq
from unimq.idempotency import SqlInbox, current
from unimq.message import Delivery, Message
from unimq.outbox import Outbox
from unimq.reliability import Retry

N = 200
ROLLBACK = 0.25


async def test_outbox_relay_killed_and_broker_restarted(tmp_path: Path, postgres_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    brokers = scripts_brokers()
    redis = brokers.Redis(home=tmp_path / "redis")
    redis.port = free_port()
    redis.url = f"redis://127.0.0.1:{redis.port}/0"
    assert await asyncio.to_thread(brokers.up, [redis])
    broker_url = f"{redis.url}?lock_timeout=2"
    tag = uuid.uuid4().hex[:8]
    orders, effects = f"orders_{tag}", f"effects_{tag}"
    engine = create_async_engine(postgres_url, pool_size=10)
    outbox = Outbox(engine, table=f"outbox_{tag}")
    inbox = SqlInbox(engine, consumer="shipping", table=f"inbox_{tag}")
    relays: list[asyncio.subprocess.Process] = []
    consumer_task: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    deliveries = 0
    try:
        await outbox.create_table()
        await inbox.create_table()
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {orders} (id INTEGER PRIMARY KEY, message_id TEXT)"))
            await conn.execute(text(f"CREATE TABLE {effects} (message_id TEXT NOT NULL)"))

        async def start_relay() -> asyncio.subprocess.Process:
            with (tmp_path / f"relay-{len(relays)}.log").open("wb") as log:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "unimq.cli", "outbox", "relay", postgres_url.replace("+asyncpg", ""),
                    broker_url, "--table", outbox.table, "--batch", "10", "--poll", "0.05", stdout=log, stderr=log)
            relays.append(proc)
            return proc

        async def apply(delivery: Delivery) -> None:
            nonlocal deliveries
            deliveries += 1
            await current().transaction.execute(text(f"INSERT INTO {effects} VALUES (:m)"),
                                                {"m": delivery.message.message_id})

        async def consume() -> None:
            async with unimq.connect(broker_url) as broker:
                await broker.consume("shipments", apply, idempotency=inbox, concurrency=4, stop=stop,
                                     retry=Retry(max_attempts=50, initial=0.05, max_delay=0.5), shutdown_timeout=2)

        async with unimq.connect(broker_url) as admin:
            await admin.ensure("shipments")
        consumer_task = asyncio.create_task(consume())
        relay = await start_relay()
        committed: set[str] = set()
        rolled_back: set[str] = set()
        kills = restarts = pending_at_kill = pending_at_restart = 0
        for i in range(N):
            message = Message(f"order {i}".encode(), key=f"customer-{i % 7}")
            try:
                async with engine.begin() as conn:
                    await conn.execute(text(f"INSERT INTO {orders} VALUES (:i, :m)"), {"i": i, "m": message.message_id})
                    await outbox.send(conn, "shipments", message)
                    if random.random() < ROLLBACK:
                        raise LookupError("the business transaction rolls back")
                committed.add(message.message_id)
            except LookupError:
                rolled_back.add(message.message_id)
            if i + 1 == 2 * 20:  # freeze the relay, so that the next burst piles up unsent
                relay.send_signal(signal.SIGSTOP)
            if i % 20 != 19:
                continue  # transactions come in bursts of 20; the relay works through each burst
            if i + 1 == 3 * 20:  # let the relay work on the backlog, SIGKILL it a moment later, restart it
                pending_at_kill = await outbox.pending()
                relay.send_signal(signal.SIGCONT)
                await asyncio.sleep(random.uniform(0.0, 0.03))
                relay.kill()
                await relay.wait()
                kills += 1
                await asyncio.sleep(0.3)
                relay = await start_relay()
            elif i + 1 == 7 * 20:  # stop the broker under the relay and the consumer: the next burst waits
                await asyncio.to_thread(brokers.down, [redis], False)
            elif i + 1 == 8 * 20:  # ... and start it again (as `scripts/brokers restart`, keeping its data)
                await asyncio.sleep(0.5)
                pending_at_restart = await outbox.pending()
                assert await asyncio.to_thread(brokers.up, [redis])
                restarts += 1
            else:
                await asyncio.sleep(0.3)
        deadline = time.monotonic() + 25
        counts: Counter[str] = Counter()
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                counts = Counter((await conn.execute(text(f"SELECT message_id FROM {effects}"))).scalars().all())
            if set(counts) >= committed:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        async with engine.connect() as conn:
            counts = Counter((await conn.execute(text(f"SELECT message_id FROM {effects}"))).scalars().all())
            unsent = (await conn.execute(text(f"SELECT count(*) FROM {outbox.table} WHERE sent_at IS NULL"))).scalar()
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}"
                         for p in sorted(tmp_path.glob("relay-*.log")))  # noqa: ASYNC240 - small files, after the run
        print(f"chaos: {N} transactions, {len(committed)} committed, {len(rolled_back)} rolled back; relay "
              f"SIGKILLed {kills}x ({pending_at_kill} rows unsent as it resumed), broker restarted {restarts}x "
              f"({pending_at_restart} unsent then); {deliveries} deliveries handled, "
              f"{sum(counts.values())} effects")
        assert not committed - set(counts), f"{len(committed - set(counts))} committed messages lost\n{logs}"
        assert not rolled_back & set(counts), "a rolled-back transaction's message was delivered"
        assert all(c == 1 for c in counts.values()), {m: c for m, c in counts.items() if c > 1}
        assert unsent == 0
        assert pending_at_kill > 0 and pending_at_restart > 0, "the faults did not land mid-relay"
    finally:
        stop.set()
        if consumer_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer_task, 10)
        for proc in relays:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        await engine.dispose()
        await asyncio.to_thread(brokers.down, [redis])


