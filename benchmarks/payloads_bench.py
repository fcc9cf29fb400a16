"""Cost of the payload middlewares: encryption per message, and the claim-check round trip per store.

    .venv/bin/python benchmarks/payloads_bench.py [--stores file,s3,azure] [--messages 2000] [--rounds 5]

1. Encryption: send + receive + ack of ``--messages`` messages of 1 KiB and 64 KiB on memory://,
   with and without ``Encrypted`` (AES-256-GCM); the difference per message is the overhead.
2. Claim-check: one message of 1 MiB and 5 MiB sent through ``ClaimCheck`` on memory:// and
   received (upload, send, receive, download, ack, delete), ``--rounds`` times per store: a temp
   directory, S3Proxy (``scripts/brokers up s3``) and Azurite (``scripts/brokers up azurite``).
Sequential, one process, on this machine; runs in well under a minute; prints Markdown tables
(docs/payloads.md quotes one run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import unimq
from unimq.middleware import Middleware
from unimq.payloads import AzureBlobStore, ClaimCheck, Encrypted, FileStore, Store, open_store

S3_URL = os.environ.get("UNIMQ_TEST_S3_URL",
                        "s3://unimq:unimq-s3-test-secret@unimq-test/?endpoint_url=http://127.0.0.1:9400&region=us-east-1")
AZURITE = os.environ.get(
    "UNIMQ_TEST_AZURITE_URL",
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6"
    "IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
)


async def round_trip(middlewares: list[Middleware], body: bytes, count: int) -> float:
    """Seconds to send ``count`` copies of ``body`` one by one and receive and ack them, 100 at a time."""
    async with unimq.connect(f"memory://bench-{uuid.uuid4().hex[:6]}?max_message_bytes={64 * 1024 * 1024}") as broker:
        await broker.ensure("bench")
        producer = broker.producer("bench", middlewares=middlewares)
        async with broker.consumer("bench", middlewares=middlewares) as consumer:
            started = time.perf_counter()
            for first in range(0, count, 100):
                batch = min(100, count - first)
                for _ in range(batch):
                    await producer.send(body)
                got = await consumer.receive_many(batch, 5)
                if len(got) != batch:
                    raise RuntimeError("messages went missing")
                await consumer.ack_many(got)
            return time.perf_counter() - started


async def encryption(count: int) -> None:
    enc = Encrypted({"k1": os.urandom(32)}, current="k1")
    print("| body | plain µs/msg | encrypted µs/msg | overhead µs/msg |")
    print("|---|---:|---:|---:|")
    for size in (1024, 64 * 1024):
        body = os.urandom(size)
        await round_trip([], body, 50)  # warm up
        plain = await round_trip([], body, count) / count * 1e6
        sealed = await round_trip([enc], body, count) / count * 1e6
        print(f"| {size // 1024} KiB | {plain:.1f} | {sealed:.1f} | {sealed - plain:.1f} |")


async def make_store(kind: str, root: Path) -> Store:
    if kind == "file":
        return await FileStore(root).open()
    if kind == "s3":
        return await open_store(S3_URL)
    store = AzureBlobStore("unimq-bench", connection_string=AZURITE)
    if not await store._client.exists():
        await store._client.create_container()
    return await store.open()


async def claim_check(stores: list[str], rounds: int) -> None:
    print("| store | body | median ms | min ms |")
    print("|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in stores:
            try:
                store = await make_store(kind, Path(tmp))
            except unimq.UnimqError as exc:
                print(f"| {kind} | - | unavailable: {exc} | |")
                continue
            try:
                for size in (1024 * 1024, 5 * 1024 * 1024):
                    body = os.urandom(size)
                    cc = ClaimCheck(store, threshold=64 * 1024)
                    times = [await round_trip([cc], body, 1) * 1000 for _ in range(rounds)]
                    print(f"| {kind} | {size // (1024 * 1024)} MiB | {statistics.median(times):.1f} | "
                          f"{min(times):.1f} |")
            finally:
                await store.close()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="file,s3,azure")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    await encryption(args.messages)
    print()
    await claim_check([s for s in args.stores.split(",") if s], args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
