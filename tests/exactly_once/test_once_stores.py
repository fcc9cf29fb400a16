"""The idempotency stores' contract, the same for every store: once per key, release on failure,
a concurrent copy waits for the first's outcome, a dead worker's claim expires; and for the SQL
inbox, the handler's writes and the processed mark commit or roll back together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from unimq.errors import ConfigError
from unimq.idempotency import (
    Claim,
    InFlightElsewhere,
    LeaseStore,
    MemoryStore,
    SqlInbox,
    current,
    idempotent,
    key_of,
)
from unimq.message import Delivery, Message

STORES = ["memory", "redis", "sqlite", "postgres"]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> AsyncIterator[Any]:
    async for made in _store(request.param, request, broker_url):
        yield made


@pytest.fixture(params=["memory", "redis"])
async def lease_store(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> AsyncIterator[Any]:
    """The stores whose claim is a lease (the SQL inbox's claim is its transaction)."""
    async for made in _store(request.param, request, broker_url):
        yield made


async def _store(kind: str, request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> AsyncIterator[Any]:
    if kind == "memory":
        yield MemoryStore(lease=0.6, wait=3.0)
    elif kind == "redis":
        from unimq_redis.idempotency import RedisStore

        redis = RedisStore(broker_url("redis"), prefix=f"test:once:{uuid.uuid4().hex}:", lease=0.6, wait=3.0)
        yield redis
        await redis.close()
    else:
        engine = _engine(kind, request)
        inbox = SqlInbox(engine, consumer="tests", table=f"inbox_{uuid.uuid4().hex[:12]}", wait=3.0)
        await inbox.create_table()
        yield inbox
        await engine.dispose()


def _engine(kind: str, request: pytest.FixtureRequest) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    if kind == "sqlite":
        return create_async_engine(f"sqlite+aiosqlite:///{request.getfixturevalue('tmp_path') / 'app.db'}")
    return create_async_engine(request.getfixturevalue("postgres_url"))


def _delivery(message_id: str | None = None) -> Delivery:
    return Delivery(Message(b"x", message_id=message_id or uuid.uuid4().hex))


async def test_once_per_key(store: Any) -> None:
    delivery = _delivery()
    async with store.once(delivery) as first:
        assert first, "the first copy must be processed"
    async with store.once(delivery) as second:
        assert not second, "a processed key must not be processed again"
    async with store.once(_delivery()) as other:
        assert other, "another key is independent"


async def test_failure_releases_the_claim(store: Any) -> None:
    delivery = _delivery()
    with pytest.raises(RuntimeError):
        async with store.once(delivery) as attempt:
            assert attempt
            raise RuntimeError("handler failed")
    async with store.once(delivery) as retry:
        assert retry, "a failed attempt must leave the message to be processed again"


async def test_concurrent_copy_waits_for_the_outcome(store: Any) -> None:
    delivery = _delivery()
    runs: list[str] = []

    async def process(name: str, fail_first: bool) -> None:
        try:
            async with store.once(delivery) as attempt:
                if attempt:
                    runs.append(name)
                    await asyncio.sleep(0.4)
                    if fail_first and len(runs) == 1:
                        raise RuntimeError("boom")
        except RuntimeError:
            pass

    # whichever copy claims first fails after 0.4 s: the waiting one must then take over
    await asyncio.wait_for(asyncio.gather(process("a", True), process("b", True)), 10)
    assert len(runs) == 2 and runs[0] != runs[1], runs
    await asyncio.wait_for(asyncio.gather(process("c", False), process("d", False)), 10)
    assert len(runs) == 2, f"processed after success: {runs}"


async def test_slow_handler_keeps_its_claim(lease_store: Any) -> None:
    store = lease_store
    delivery = _delivery()
    runs = 0

    async def process() -> None:
        nonlocal runs
        async with store.once(delivery) as attempt:
            if attempt:
                runs += 1
                await asyncio.sleep(1.5)  # 2.5 leases: only renewal keeps the claim

    await asyncio.wait_for(asyncio.gather(process(), process()), 10)
    assert runs == 1


async def test_dead_workers_claim_expires(lease_store: Any) -> None:
    """A claim that is never renewed nor settled (its worker died) expires; the SQL inbox's
    counterpart is test_sql_inbox_dead_connection."""
    store = lease_store
    assert isinstance(store, LeaseStore)
    key = uuid.uuid4().hex
    state, _ = await store.claim(key, "dead-worker")  # claimed, never renewed, never settled
    assert state is Claim.CLAIMED
    state, left = await store.claim(key, "other")
    assert state is Claim.BUSY and 0 < left <= 0.6
    async with store.once(key) as attempt:  # waits for the lease to run out, then takes over
        assert attempt
    assert not await store.renew(key, "dead-worker")


async def test_wait_is_bounded(store: Any) -> None:
    delivery = _delivery()
    holder_in = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with store.once(delivery) as attempt:
            assert attempt
            holder_in.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await asyncio.wait_for(holder_in.wait(), 5)
    store.wait = 0.3
    with pytest.raises(InFlightElsewhere):
        async with store.once(delivery):
            pytest.fail("a copy in flight elsewhere must not be processed")
    release.set()
    await asyncio.wait_for(task, 5)


async def test_key_function_and_missing_id() -> None:
    store = MemoryStore()
    seen: list[str] = []
    by_order = idempotent(lambda d: seen.append(d.message.headers["order"]), store,
                          key=lambda d: d.message.headers["order"])
    for _ in range(3):
        await by_order(Delivery(Message(b"", headers={"order": "42"})))  # three ids, one order
    assert seen == ["42"]
    with pytest.raises(ConfigError, match="message_id"):
        key_of(Delivery(Message(b"", message_id="")))
    with pytest.raises(ConfigError, match="key function"):
        await idempotent(lambda d: None, store, key=lambda d: "")(_delivery())
    with pytest.raises(ConfigError, match="store"):
        idempotent(lambda d: None, object())  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_sql_inbox_effect_and_mark_together(kind: str, request: pytest.FixtureRequest) -> None:
    from sqlalchemy import text

    engine = _engine(kind, request)
    table = f"inbox_{uuid.uuid4().hex[:12]}"
    effects = f"effects_{uuid.uuid4().hex[:12]}"
    inbox = SqlInbox(engine, consumer="billing", table=table)
    await inbox.create_table()
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {effects} (message_id TEXT)"))

    async def handler(delivery: Delivery) -> None:
        await current().transaction.execute(text(f"INSERT INTO {effects} VALUES (:m)"),
                                            {"m": delivery.message.message_id})
        if delivery.message.headers.get("fail"):
            raise RuntimeError("after the write")

    wrapped = idempotent(handler, inbox)
    failing = Delivery(Message(b"", headers={"fail": "1"}))
    with pytest.raises(RuntimeError):
        await wrapped(failing)
    assert not await inbox.processed(failing.message.message_id), "a rolled-back attempt left its mark"
    good = _delivery()
    for _ in range(3):
        await wrapped(good)
    async with engine.connect() as conn:
        rows = (await conn.execute(text(f"SELECT message_id FROM {effects}"))).scalars().all()
    assert rows == [good.message.message_id], "the effect must be written once, and never for the rollback"
    assert await inbox.processed(good.message.message_id)
    assert await inbox.purge(0) == 1
    await engine.dispose()


async def test_sql_inbox_dead_connection(pg_engine: Any) -> None:
    """A worker whose connection dies mid-handler (SIGKILL) loses its claim: its transaction aborts."""
    from sqlalchemy import text

    inbox = SqlInbox(pg_engine, consumer="tests", table=f"inbox_{uuid.uuid4().hex[:12]}", wait=5.0)
    await inbox.create_table()
    delivery = _delivery()
    entered = asyncio.Event()

    async def dying() -> None:
        async with inbox.once(delivery) as attempt:
            assert attempt
            pid = (await attempt.transaction.execute(text("SELECT pg_backend_pid()"))).scalar()
            entered.set()
            async with pg_engine.connect() as killer:
                await killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            await asyncio.sleep(10)

    task = asyncio.create_task(dying())
    await asyncio.wait_for(entered.wait(), 5)
    async with inbox.once(delivery) as attempt:
        assert attempt, "the dead worker's claim must not block the message"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await inbox.processed(delivery.message.message_id)


async def test_sql_inbox_with_orm_sessions(tmp_path: Any) -> None:
    """``sessions=async_sessionmaker``: the handler gets an AsyncSession in the inbox's transaction."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'orm.db'}")
    inbox = SqlInbox(engine, sessions=async_sessionmaker(engine))
    await inbox.create_table()
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE effects (message_id TEXT)"))
    delivery = _delivery()
    for _ in range(2):
        async with inbox.once(delivery) as attempt:
            if attempt:
                assert isinstance(attempt.transaction, AsyncSession)
                await attempt.transaction.execute(text("INSERT INTO effects VALUES (:m)"),
                                                  {"m": delivery.message.message_id})
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM effects"))).scalar() == 1
    await engine.dispose()
