"""The new backend goes down during a primary-policy dual-publish: the old side keeps accepting,
the new side's failures are journaled, and after the new backend is back the journal replays and
verify reports zero missing on both sides."""

import asyncio
import time
import uuid
from pathlib import Path

import unimq
from unimq.migrate import DualProducer, verify


async def test_primary_dual_publish_survives_new_backend_outage(broker_url, brokers, tmp_path: Path) -> None:
    dest = f"outage-{uuid.uuid4().hex[:8]}"
    async with unimq.connect(broker_url("redis")) as old, unimq.connect(broker_url("nats")) as new:
        for broker in (old, new):
            await broker.ensure(dest, groups=("unimq-verify",))
        dual = DualProducer(old.producer(dest), new.producer(dest, retry=None), policy="primary",
                            journal=tmp_path / "journal", replay_every=0.5)
        async with dual:
            await dual.send_many([f"before-{i}".encode() for i in range(20)])
            await brokers("stop", "nats")
            try:
                await asyncio.wait_for(dual.send_many([f"during-{i}".encode() for i in range(10)]), 60)
                assert dual.stats.journaled == 10, dual.stats
            finally:
                await brokers("up", "nats")
            deadline = time.monotonic() + 90
            while len(dual.journal) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert len(dual.journal) == 0, f"{len(dual.journal)} messages still journaled after recovery"
            await dual.send_many([f"after-{i}".encode() for i in range(10)])
        report = await verify(old, dest, new, dest, idle=3.0)
        assert report.missing == [] and report.extra == [], report.summary()
        assert report.old_count == report.new_count == 40
        await old.delete(dest)
        await new.delete(dest)
