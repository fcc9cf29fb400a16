"""NATS JetStream: plain nats-py vs unimq vs FastStream, on the shared harness.

* produce: plain ``js.publish_async`` with pipelined acks (batches of 1000, acks awaited per batch)
  vs ``producer.send_many`` (the same batches through the adapter). unimq puts each message's id
  in a header (the contract: ids survive redelivery, dead-lettering, migration), so a second raw
  baseline, ``raw+id``, publishes the same way with a ``Message-Id`` header: the ratio to ``raw`` is
  the cost of unimq and its header, the ratio to ``raw+id`` the cost of unimq alone. Batching off:
  one awaited ``js.publish`` / ``send`` per message;
* consume: plain pull ``fetch(100)`` + ``msg.ack()`` per message vs a unimq consumer (prefetch
  100); competing consumers share one durable.

``unimq-loop`` is the idiomatic per-message path as its own row: ``async for delivery in consumer:
await delivery.ack()`` (batching on or off alike), against the raw client reading in batches. Run it
alone with ``--ops consume --batch on --concurrency 1 --contenders raw,unimq,unimq-loop``.

    .venv/bin/python benchmarks/nats_bench.py [--quick] [--url nats://127.0.0.1:4222] [harness options]
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import nats
import peers
from harness import Backend, Contender, Quota, UnimqContender, UnimqLoop, Workload, main, peer
from nats.js import api
from nats.js.errors import FetchTimeoutError
from unimq_nats.mapping import stream_name

BATCH = 1000
FETCH = 100


class NatsPy(Contender):
    name = "raw"
    with_id = False

    def __init__(self, url: str) -> None:
        self.url = url.split("?", 1)[0]

    def client(self) -> str:
        return f"nats-py {version('nats-py')}" + (" + Message-Id" if self.with_id else "")

    async def open(self) -> None:
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()

    async def close(self) -> None:
        await self.nc.close()

    async def create(self, dest: str, w: Workload) -> None:
        await self.js.add_stream(api.StreamConfig(name=stream_name(dest), subjects=[dest]))

    async def delete(self, dest: str) -> None:
        await self.js.delete_stream(stream_name(dest))

    def _headers(self) -> dict[str, str] | None:
        return {"Message-Id": uuid.uuid4().hex} if self.with_id else None

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        if not batch:
            for body in payloads:
                await self.js.publish(dest, body, headers=self._headers())
            return
        for i in range(0, len(payloads), BATCH):
            futures = [await self.js.publish_async(dest, body, headers=self._headers())
                       for body in payloads[i:i + BATCH]]
            await asyncio.gather(*futures)

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        sub = await self.js.pull_subscribe(dest, durable="plain", stream=stream_name(dest))
        try:
            while not quota.finished:
                try:
                    msgs = await sub.fetch(min(FETCH, max(1, quota.remaining)), timeout=1)
                except (FetchTimeoutError, TimeoutError):
                    continue
                for msg in msgs:
                    await msg.ack()
                quota.take(len(msgs))
        finally:
            await sub.unsubscribe()

    async def send_one(self, dest: str, body: bytes) -> None:
        await self.js.publish(dest, body, headers=self._headers())

    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        async def callback(msg: Any) -> None:
            on_body(msg.data)
            await msg.ack()

        sub = await self.js.subscribe(dest, durable="plain-push", stream=stream_name(dest), cb=callback,
                                      manual_ack=True)
        try:
            await asyncio.Event().wait()
        finally:
            await sub.unsubscribe()


class NatsPyWithId(NatsPy):
    """The raw client carrying a Message-Id header, as unimq does."""

    name = "raw+id"
    with_id = True




def contenders(url: str) -> list[Contender]:
    return [
        NatsPy(url),
        NatsPyWithId(url),
        UnimqContender(url, prefetch=FETCH, group="unimq"),
        UnimqLoop(url, prefetch=FETCH, group="unimq", fill_by="unimq"),
        *peer(lambda: peers.FastStreamNats(url.split("?", 1)[0], window=BATCH, fetch=FETCH,
                                           stream_name=stream_name)),
    ]


BACKEND = Backend(
    name="nats",
    default_url="nats://127.0.0.1:4222",
    contenders=contenders,
    quick_count=2_000,
    full_count=20_000,
    notes=["raw: publish_async, 1000 in flight, acks awaited per batch; raw+id adds a Message-Id header as unimq does",
           "consumers: pull fetch(100) + ack per message; competing consumers share one durable",
           "unimq-loop: async for + ack() per message, prefetch 100 (the idiomatic path)",
           "FastStream: concurrent publish (each awaits its ack) 1000 at a time; PullSub(batch_size=100)"],
)

if __name__ == "__main__":
    main(BACKEND)
