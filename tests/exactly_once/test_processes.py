"""Exactly-once effect with two OS processes consuming one destination, injected duplicates, and
SIGKILL mid-handler: every message's effect is applied exactly once.

Each worker (worker.py) runs ``broker.consume(..., idempotency=store)``. Duplicates are the same
messages sent again while the workers run. Crashes: a worker SIGKILLs itself mid-handler for
every 7th message id (once per id) while holding the claim, and the test SIGKILLs one worker at a
random moment (SQL inbox only: a lease store cannot roll back an effect applied just before the
kill, so its workers also run one handler at a time; docs/exactly-once.md). Killed workers are
restarted. With the SQL inbox the effect is a row
written in the inbox's transaction; with the Redis store it is an entry in a Redis list.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import unimq
from unimq.message import Message

WORKER = Path(__file__).with_name("worker.py")
N = 60
DUPLICATES = 25
#: (conformance target, store); the SQL inbox runs on the PostgreSQL of `scripts/brokers up postgres`.
CASES = [("redis", "sql"), ("rabbitmq", "sql"), ("kafka", "sql"), ("sqs", "sql"),
         ("redis", "redis"), ("rabbitmq", "redis")]
BUDGET = {"kafka": 75.0}
#: Kafka reassigns a killed member's partitions only after its session timeout (6 s at least), so it
#: gets fewer self-kills, and two partitions so that both workers consume.
CRASH_EVERY = {"kafka": 20}
URL_OPTIONS = {"redis": "lock_timeout=2", "kafka": "session_timeout_ms=6000&heartbeat_interval_ms=500"}
ENSURE: dict[str, dict[str, Any]] = {"kafka": {"partitions": 2}}


def message_ids(count: int, every: int) -> list[str]:
    """``count`` random ids of which exactly every ``every``-th is one the workers crash on
    (worker.crash_now), so each run injects the same number of crashes: a run that happened to
    draw no crash id proved nothing about crashes, and failed the test for it."""
    ids = []
    for i in range(count):
        crash = i % every == every // 2
        while True:
            candidate = uuid.uuid4().hex
            if (zlib.crc32(candidate.encode()) % every == 0) == crash:
                ids.append(candidate)
                break
    return ids


class Effects:
    """Where the workers' effects land, and how to count them."""

    def __init__(self, store: str, postgres_url: str | None, redis_url: str) -> None:
        self.store = store
        self.name = f"effects_{uuid.uuid4().hex[:10]}"
        self.inbox = f"inbox_{uuid.uuid4().hex[:10]}"
        self.prefix = f"test:proof:{uuid.uuid4().hex}:"
        self.postgres_url = postgres_url
        self.redis_url = redis_url
        self._engine: Any = None
        self._redis: Any = None

    async def open(self) -> None:
        if self.store == "sql":
            from sqlalchemy import text
            from sqlalchemy.ext.asyncio import create_async_engine

            from unimq.idempotency import SqlInbox

            assert self.postgres_url is not None
            self._engine = create_async_engine(self.postgres_url)
            await SqlInbox(self._engine, table=self.inbox).create_table()
            async with self._engine.begin() as conn:
                await conn.execute(text(f"CREATE TABLE {self.name} (message_id TEXT NOT NULL, pid INTEGER)"))
        else:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(self.redis_url)

    async def counts(self) -> Counter[str]:
        if self.store == "sql":
            from sqlalchemy import text

            async with self._engine.connect() as conn:
                rows = (await conn.execute(text(f"SELECT message_id FROM {self.name}"))).scalars().all()
            return Counter(rows)
        return Counter(m.decode() for m in await self._redis.lrange(self.name, 0, -1))

    def args(self) -> list[str]:
        if self.store == "sql":
            return ["--store", "sql", "--db", str(self.postgres_url), "--inbox", self.inbox, "--effects", self.name]
        # One handler at a time: a SIGKILL must not land between a sibling's effect and its mark.
        return ["--store", "redis", "--redis", self.redis_url, "--prefix", self.prefix, "--effects", self.name,
                "--lease", "1.0", "--concurrency", "1"]

    async def close(self) -> None:
        if self._engine is not None:
            from sqlalchemy import text

            async with self._engine.begin() as conn:
                await conn.execute(text(f"DROP TABLE IF EXISTS {self.name}"))
                await conn.execute(text(f"DROP TABLE IF EXISTS {self.inbox}"))
            await self._engine.dispose()
        if self._redis is not None:
            await self._redis.delete(self.name)
            await self._redis.aclose()


@pytest.mark.parametrize(("target", "store"), CASES, ids=[f"{t}-{s}" for t, s in CASES])
async def test_two_processes_sigkill_and_duplicates(target: str, store: str, broker_url: Callable[[str], str],
                                                    request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = broker_url(target)
    if target in URL_OPTIONS:
        url += ("&" if "?" in url else "?") + URL_OPTIONS[target]
    postgres_url = request.getfixturevalue("postgres_url") if store == "sql" else None
    effects = Effects(store, postgres_url, broker_url("redis"))
    await effects.open()
    markers = tmp_path / "crashed"
    markers.mkdir()
    dest = f"once-{uuid.uuid4().hex[:10]}"
    budget = BUDGET.get(target, 45.0)
    workers: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []
    log_of: dict[int, Path] = {}

    async def spawn() -> asyncio.subprocess.Process:
        log = tmp_path / f"worker-{len(logs)}.log"
        logs.append(log)
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(WORKER), "--url", url, "--dest", dest, "--lock", "2",
                "--crash-every", str(CRASH_EVERY.get(target, 7)),
                "--markers", str(markers), *effects.args(), stdout=out, stderr=out)
        log_of[proc.pid] = log
        return proc

    async with unimq.connect(url) as broker:
        try:
            await broker.ensure(dest, **ENSURE.get(target, {}))
            ids = message_ids(N, CRASH_EVERY.get(target, 7))
            messages = [Message(f"order {i}".encode(), key=f"k{i % 4}", message_id=ids[i]) for i in range(N)]
            producer = broker.producer(dest)
            await producer.send_many(messages)
            workers = [await spawn(), await spawn()]
            await asyncio.sleep(0.5)
            twins = random.sample(messages, DUPLICATES)  # injected duplicates: same ids, sent again
            await producer.send_many([Message(m.body, key=m.key, message_id=m.message_id) for m in twins])
            expected = {m.message_id for m in messages}
            crashes = killed = 0
            deadline = time.monotonic() + budget
            counts: Counter[str] = Counter()
            while time.monotonic() < deadline:
                for i, proc in enumerate(workers):
                    if proc.returncode is not None:
                        assert proc.returncode == -signal.SIGKILL, \
                            f"a worker failed (exit {proc.returncode}):\n{log_of[proc.pid].read_text()[-3000:]}"
                        crashes += 1
                        workers[i] = await spawn()
                counts = await effects.counts()
                if set(counts) >= expected:
                    break
                alive = [proc for proc in workers if proc.returncode is None]
                if store == "sql" and not killed and alive and len(counts) >= N // 3:
                    with contextlib.suppress(ProcessLookupError):  # it may have just killed itself
                        random.choice(alive).kill()  # from outside, at whatever point its handlers are
                        killed = 1
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)  # room for a wrongly repeated effect to show up
            counts = await effects.counts()
            if not set(counts) >= expected:
                dead = await broker.peek(broker.dead_letter_destination(dest), 100)
                print(f"stats {await broker.stats(dest)}; dead-lettered {[(m.message_id, m.headers) for m in dead]}")
        finally:
            for proc in workers:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in workers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 15)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await effects.close()
            with contextlib.suppress(Exception):
                await broker.delete(dest)
    tail = "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in logs)
    missing = expected - set(counts)
    repeated = {m: c for m, c in counts.items() if c > 1}
    print(f"{target}/{store}: {N} messages + {DUPLICATES} duplicates, {crashes} SIGKILLs "
          f"({killed} external), {len(logs)} worker processes; effects {sum(counts.values())}")
    assert not missing, f"{len(missing)} messages never took effect\n{tail}"
    assert not repeated, f"effects applied more than once: {repeated}\n{tail}"
    assert set(counts) == expected
    assert crashes >= (1 if target == "kafka" else 2), f"no crash injected ({crashes} SIGKILLs)\n{tail}"
