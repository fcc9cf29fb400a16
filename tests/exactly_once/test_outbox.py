"""The transactional outbox: rows commit and roll back with the caller's transaction; the relay
publishes committed ones in order per key (also with competing relays on PostgreSQL), marks them
sent, sets aside a message that can never be published, and waits out a database that is down."""

from __future__ import annotations

import asyncio
import random
import shutil
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, private_home, scripts_brokers

import unimq
from unimq.errors import ConfigError
from unimq.message import Message
from unimq.outbox import Outbox


def _engine(kind: str, request: pytest.FixtureRequest) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    if kind == "sqlite":
        return create_async_engine(f"sqlite+aiosqlite:///{request.getfixturevalue('tmp_path') / 'app.db'}")
    return create_async_engine(request.getfixturevalue("postgres_url"))


async def _collect(broker: unimq.Broker, destination: str, count: int, quiet: float = 0.5) -> list[Message]:
    got: list[Message] = []
    async with broker.consumer(destination) as consumer:
        while (d := await consumer.receive(timeout=quiet if len(got) >= count else 10)) is not None:
            got.append(d.message)
            await d.ack()
    return got


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_commit_sends_rollback_does_not(kind: str, request: pytest.FixtureRequest) -> None:
    from sqlalchemy import text

    engine = _engine(kind, request)
    outbox = Outbox(engine, table=f"outbox_{uuid.uuid4().hex[:10]}")
    await outbox.create_table()
    orders = f"orders_{uuid.uuid4().hex[:10]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {orders} (id INTEGER PRIMARY KEY)"))
    committed: list[str] = []
    for i in range(30):
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"INSERT INTO {orders} VALUES (:i)"), {"i": i})
                sent = await outbox.send(conn, "orders", Message(f"order {i}".encode(), key=f"k{i % 3}"))
                if i % 4 == 0:
                    raise RuntimeError("the business transaction fails after writing its message")
            committed.append(sent.message_id)
        except RuntimeError:
            pass
    assert await outbox.pending() == len(committed)
    async with unimq.connect(f"memory://outbox-{uuid.uuid4().hex[:8]}") as broker:
        assert await outbox.relay(broker).drain() == len(committed)
        got = await _collect(broker, "orders", len(committed))
    assert [m.message_id for m in got] == committed, "committed messages, once each, in commit order"
    assert await outbox.pending() == 0
    assert await outbox.purge(0) == len(committed)
    await engine.dispose()


async def test_send_failure_rolls_back_the_business_change(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
    outbox = Outbox(engine, table="missing_outbox")  # never created: the insert fails
    with pytest.raises(Exception, match="missing_outbox"):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO orders VALUES (1)"))
            await outbox.send(conn, "orders", b"x")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM orders"))).scalar() == 0
    with pytest.raises(ConfigError):
        async with engine.begin() as conn:
            await outbox.send(conn, "", b"x")
    with pytest.raises(ConfigError):
        Outbox(engine, table="x; DROP TABLE orders")
    await engine.dispose()


async def test_competing_relays_keep_order_per_key(pg_engine: Any) -> None:
    from sqlalchemy import text

    outbox = Outbox(pg_engine, table=f"outbox_{uuid.uuid4().hex[:10]}")
    await outbox.create_table()
    keys = [f"k{i}" for i in range(5)]
    expected: dict[str, list[str]] = defaultdict(list)
    async with pg_engine.begin() as conn:
        for i in range(300):
            key = random.choice(keys)
            message = await outbox.send(conn, "events", Message(str(i).encode(), key=key))
            expected[key].append(message.message_id)
    async with unimq.connect(f"memory://relays-{uuid.uuid4().hex[:8]}") as broker:
        relays = [outbox.relay(broker, batch=25, poll=0.02) for _ in range(3)]
        async with relays[0], relays[1], relays[2]:
            got = await asyncio.wait_for(_collect(broker, "events", 300), 30)
        assert sum(r.stats.relayed for r in relays) == 300, [r.stats for r in relays]
    per_key: dict[str, list[str]] = defaultdict(list)
    for message in got:
        assert message.key is not None
        per_key[message.key].append(message.message_id)
    assert dict(per_key) == dict(expected), "every row once, and each key's rows in their order"
    async with pg_engine.connect() as conn:
        assert (await conn.execute(text(f"SELECT count(*) FROM {outbox.table} WHERE sent_at IS NULL"))).scalar() == 0


async def test_a_message_that_can_never_be_sent_is_set_aside(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    outbox = Outbox(engine)
    await outbox.create_table()
    async with engine.begin() as conn:
        await outbox.send(conn, "q", b"small 1")
        await outbox.send(conn, "q", b"x" * 2000)
        await outbox.send(conn, "q", b"small 2")
    async with unimq.connect(f"memory://big-{uuid.uuid4().hex[:8]}?max_message_bytes=1000") as broker:
        relay = outbox.relay(broker)
        assert await asyncio.wait_for(relay.drain(), 10) == 2
        assert relay.stats.dead == 1
        got = await _collect(broker, "q", 2)
    assert [m.body for m in got] == [b"small 1", b"small 2"]
    async with engine.connect() as conn:
        error = (await conn.execute(text("SELECT last_error FROM unimq_outbox WHERE failed_at IS NOT NULL"))).scalar()
    assert error is not None and "MessageTooLarge" in error
    await engine.dispose()


async def test_relay_waits_out_a_database_outage(postgres_url: str) -> None:
    """A private PostgreSQL stopped under a running relay: the relay backs off and resumes."""
    from sqlalchemy.ext.asyncio import create_async_engine

    brokers = scripts_brokers()
    port = free_port()
    pg = brokers.Postgres(home=private_home("pg"), port=port)
    assert await asyncio.to_thread(brokers.up, [pg])
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", pool_pre_ping=True)
    try:
        outbox = Outbox(engine)
        await outbox.create_table()
        async with unimq.connect(f"memory://dbdown-{uuid.uuid4().hex[:8]}") as broker:
            relay = outbox.relay(broker, poll=0.05, max_backoff=0.5)
            async with relay:
                async with engine.begin() as conn:
                    await outbox.send(conn, "q", b"before")
                await asyncio.to_thread(brokers.down, [pg], False)
                await asyncio.sleep(1.5)
                assert relay.stats.failures > 0, "the relay should have met the outage"
                assert await asyncio.to_thread(brokers.up, [pg])
                async with engine.begin() as conn:
                    await outbox.send(conn, "q", b"after")
                got = await _collect(broker, "q", 2)
        # At-least-once: if the database stopped between publishing "before" and committing its
        # mark, "before" is published again, with the same message_id (an idempotent consumer's job).
        assert {m.body for m in got} == {b"after", b"before"}
        assert len({m.message_id for m in got}) == 2
    finally:
        await engine.dispose()
        await asyncio.to_thread(brokers.down, [pg])
        shutil.rmtree(pg.dir, ignore_errors=True)
