"""The migration toolkit on memory:// (two named in-process brokers stand for old and new)."""

import asyncio
import uuid
from pathlib import Path

import pytest

import unimq
from unimq.migrate import (
    CanaryProducer,
    DualProducer,
    MergedConsumer,
    Mirror,
    compare,
    drain,
    stable_share,
    verify,
)
from unimq.reliability import ORIGIN


@pytest.fixture
async def old_new():
    tag = uuid.uuid4().hex[:6]
    async with (
        unimq.connect(f"memory://old-{tag}") as old,
        unimq.connect(f"memory://new-{tag}?auto_create=false") as new,
    ):
        yield old, new


async def bodies(broker: unimq.Broker, dest: str, group: str | None = None) -> list[unimq.Message]:
    async with broker.consumer(dest, group) as consumer:
        got = await consumer.receive_many(1000, timeout=0.2)
        for d in got:
            await d.ack()
    return [d.message for d in got]


async def test_dual_both_same_ids_and_failure(old_new) -> None:
    old, new = old_new
    await new.ensure("orders")
    dual = DualProducer(old.producer("orders"), new.producer("orders"), policy="both")
    sent = await dual.send_many([b"1", b"2"]) + [await dual.send(b"3", key="k", headers={"h": "v"})]
    ids = [m.message_id for m in sent]
    assert [m.message_id for m in await bodies(old, "orders")] == ids
    got_new = await bodies(new, "orders")
    assert [m.message_id for m in got_new] == ids and got_new[2].key == "k" and got_new[2].headers["h"] == "v"
    refused = DualProducer(old.producer("orders"), new.producer("missing"), policy="both")
    with pytest.raises(unimq.PublishError, match="new backend refused"):
        await refused.send(b"x")
    assert dual.capabilities.backend == "memory+memory"


async def test_dual_primary_journals_and_replays_across_restart(old_new, tmp_path: Path) -> None:
    old, new = old_new
    journal = tmp_path / "journal"
    dual = DualProducer(old.producer("jobs"), new.producer("jobs"), policy="primary", journal=str(journal))
    sent = [await dual.send(f"{i}".encode()) for i in range(5)]  # "jobs" does not exist on new yet
    assert dual.stats.journaled == 5 and len(list(journal.glob("*.json"))) == 5
    await new.ensure("jobs")
    restarted = DualProducer(old.producer("jobs"), new.producer("jobs"), policy="primary", journal=str(journal))
    assert await restarted.replay() == 5
    assert sorted(m.message_id for m in await bodies(new, "jobs")) == sorted(m.message_id for m in sent)
    assert not list(journal.glob("*.json"))


async def test_dual_shadow_counts_failures(old_new) -> None:
    old, new = old_new
    dual = DualProducer(old.producer("s"), new.producer("nowhere"), policy="shadow")
    await dual.send(b"x")
    assert dual.stats.new_failures == 1 and len(await bodies(old, "s")) == 1


async def test_canary_is_stable_and_rolls_back(old_new) -> None:
    old, new = old_new
    await new.ensure("c")
    canary = CanaryProducer(old.producer("c"), new.producer("c"), share=0.3)
    keys = [f"customer-{i}" for i in range(200)]
    moved_at_30 = {k for k in keys if stable_share(k) < 0.3}
    await canary.send_many([unimq.Message(b"x", key=k) for k in keys])
    assert {m.key for m in await bodies(new, "c")} == moved_at_30
    assert 30 < len(moved_at_30) < 90
    canary.set_share(0.6)
    assert moved_at_30 <= {k for k in keys if canary.route(unimq.Message(b"", key=k)) is canary.new}
    canary.set_share(0.0)
    await canary.send_many([unimq.Message(b"x", key=k) for k in keys])
    assert len(await bodies(new, "c")) == 0


async def test_merged_consumer_processes_each_id_once(old_new) -> None:
    old, new = old_new
    await new.ensure("m")
    dual = DualProducer(old.producer("m"), new.producer("m"))
    sent = await dual.send_many([f"{i}".encode() for i in range(20)])
    seen: list[str] = []
    async with MergedConsumer(old.consumer("m"), new.consumer("m")) as merged:
        first = await merged.receive(timeout=1)
        assert first is not None
        await first.nack()  # a failed first copy hands the message to its twin, not to oblivion
        while (d := await merged.receive(timeout=0.3)) is not None:
            seen.append(d.message.message_id)
            await d.ack()
    assert sorted(seen) == sorted(m.message_id for m in sent)
    assert merged.duplicates >= 19


@pytest.mark.parametrize("shared", ["memory", "redis"])
async def test_two_merged_consumers_share_one_store(old_new, shared, broker_url) -> None:
    """Two merged consumers (each with its own in-flight map, as two processes have) read both sides
    in competition; the shared idempotency store lets each id be processed by exactly one of them,
    even when both hold a copy at the same time."""
    from unimq.idempotency import MemoryStore

    old, new = old_new
    await new.ensure("s")
    if shared == "redis":
        from unimq_redis.idempotency import RedisStore

        store = RedisStore(broker_url("redis"), prefix=f"test:merge:{uuid.uuid4().hex}:", lease=2.0)
    else:
        store = MemoryStore(lease=2.0)
    sent = await DualProducer(old.producer("s"), new.producer("s")).send_many([f"{i}".encode() for i in range(40)])
    seen: list[str] = []

    async def worker() -> int:
        async with MergedConsumer(old.consumer("s"), new.consumer("s"), processed=store) as merged:
            while (d := await merged.receive(timeout=1.0)) is not None:
                seen.append(d.message.message_id)
                await asyncio.sleep(0.005)  # hold it, so the twin often arrives at the other worker meanwhile
                await d.ack()
            return merged.duplicates

    duplicates = await asyncio.wait_for(asyncio.gather(worker(), worker()), 30)
    await store.close()
    assert sorted(seen) == sorted(m.message_id for m in sent), "each id processed once, by one of the two"
    assert sum(duplicates) == 40
    assert (await old.stats("s")).depth == 0 and (await new.stats("s")).depth == 0


async def test_mirror_both_ways_without_loops_and_verify(old_new) -> None:
    old, new = old_new
    await new.ensure("t", groups=("unimq-mirror", "unimq-verify"))
    await old.ensure("t", groups=("unimq-mirror", "unimq-verify"))
    await old.producer("t").send_many([unimq.Message(f"o{i}".encode(), key=f"k{i % 3}") for i in range(30)])
    await new.producer("t").send_many([f"n{i}".encode() for i in range(5)])
    a_to_b = Mirror(old, "t", new, "t", origin="old", target_origin="new")
    b_to_a = Mirror(new, "t", old, "t", origin="new", target_origin="old")
    stats = await asyncio.gather(a_to_b.run(idle=0.5), b_to_a.run(idle=0.5))
    assert stats[0].forwarded == 30 and stats[1].forwarded == 5
    assert stats[0].skipped_loops == 5 and stats[1].skipped_loops == 30
    report = await verify(old, "t", new, "t", idle=0.3)
    assert report.ok() and report.old_count == report.new_count == 35, report.summary()
    origins = {m.headers.get(ORIGIN) for m in await bodies(new, "t")}
    assert origins == {"old", None}  # forwarded from old, or produced on new itself


def test_compare_reports_every_kind_of_problem() -> None:
    old = [("a", "k"), ("b", "k"), ("c", None), ("c", None), ("d", "j")]
    new = [("b", "k"), ("a", "k"), ("e", None), ("e", None), ("d", "j")]
    report = compare(old, new)
    assert report.missing == ["c"] and report.extra == ["e"]
    assert report.duplicated_old == {"c": 2} and report.duplicated_new == {"e": 2}
    assert report.out_of_order_keys == ["k"] and not report.ok() and report.ok(tolerance=3)


async def test_drain_forwards_until_idle(old_new) -> None:
    old, new = old_new
    await new.ensure("d")
    await old.producer("d").send_many([b"1", b"2", b"3"])
    assert await drain(old, "d", into=(new, "d"), idle=0.3) == 3
    assert len(await bodies(new, "d")) == 3 and (await old.stats("d")).depth == 0
