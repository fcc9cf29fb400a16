"""sqs:// throughput: unimq vs plain boto3 on the same SQS endpoint, same batching and concurrency.

    .venv/bin/python benchmarks/sqs_bench.py [--quick] [--messages 5000] [--rounds 5] [--json out.json]

Both sides send 1 KiB messages in batches of 10 (SendMessageBatch) with ``--concurrency`` batches
in flight, then receive them 10 per ReceiveMessage with ``--concurrency`` receives in flight and
delete them in batches. Plain boto3 uses that many threads; unimq uses ``send_many`` (its core
pipelines 8 batches) and ``broker.consume(concurrency=10 × C, prefetch=10 × C)``. Runs are
interleaved (raw, unimq, unimq, raw, …), each on a fresh queue; the medians and the ratio
unimq/raw are printed. The bar (issue #8): ratio ≥ 0.9 for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3

import unimq
from unimq.url import parse_url

DEFAULT_URL = os.environ.get("UNIMQ_TEST_SQS_URL", "sqs://?endpoint_url=http://127.0.0.1:9324&region=us-east-1")
BATCH = 10


def raw_client(url: str, threads: int) -> Any:
    import botocore.config

    query = parse_url(url).query
    return boto3.client(
        "sqs", endpoint_url=query.get("endpoint_url"), region_name=query.get("region", "us-east-1"),
        aws_access_key_id=query.get("aws_access_key_id", "x"),
        aws_secret_access_key=query.get("aws_secret_access_key", "x"),
        config=botocore.config.Config(max_pool_connections=threads * 2),
    )


def raw_run(client: Any, queue: str, messages: int, body: str, concurrency: int) -> tuple[float, float]:
    """Plain boto3 with a thread pool: (produce msg/s, consume msg/s)."""
    url = client.create_queue(QueueName=queue)["QueueUrl"]
    chunks = [min(BATCH, messages - i) for i in range(0, messages, BATCH)]

    def send(count: int) -> None:
        entries = [{"Id": str(i), "MessageBody": body} for i in range(count)]
        response = client.send_message_batch(QueueUrl=url, Entries=entries)
        assert not response.get("Failed"), response["Failed"]

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(send, chunks))
        produce = messages / (time.perf_counter() - started)

        lock = threading.Lock()
        received = [0]
        finished = [0.0]

        def consume() -> None:
            while received[0] < messages:
                got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=1,
                                             MessageAttributeNames=["All"]).get("Messages", [])
                if got:
                    client.delete_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
                    with lock:
                        received[0] += len(got)
                        if received[0] >= messages and not finished[0]:
                            finished[0] = time.perf_counter()

        started = time.perf_counter()
        list(pool.map(lambda _: consume(), range(concurrency)))  # the idle tail of the last polls is not timed
        consume_rate = messages / (finished[0] - started)
    client.delete_queue(QueueUrl=url)
    return produce, consume_rate


async def unimq_run(
    broker: unimq.Broker, queue: str, messages: int, body: bytes, concurrency: int
) -> tuple[float, float]:
    """The same through unimq: (produce msg/s, consume msg/s)."""
    await broker.ensure(queue, dead_letter=False)
    producer = broker.producer(queue)
    started = time.perf_counter()
    await producer.send_many([body] * messages)
    produce = messages / (time.perf_counter() - started)

    received = 0
    stop = asyncio.Event()

    async def handler(delivery: unimq.Delivery) -> None:
        nonlocal received
        await delivery.ack()
        received += 1
        if received >= messages:
            stop.set()

    started = time.perf_counter()
    runner = asyncio.create_task(broker.consume(queue, handler, concurrency=concurrency * BATCH,
                                                prefetch=concurrency * BATCH, stop=stop))
    await stop.wait()
    consume = messages / (time.perf_counter() - started)
    await runner
    await broker.delete(queue)
    return produce, consume


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1500 messages, 5 rounds: under 2 minutes")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds = 1500, 5
    body = "x" * args.size
    client = raw_client(args.url, args.concurrency)
    runs: dict[str, list[tuple[float, float]]] = {"raw": [], "unimq": []}
    async with unimq.connect(args.url) as broker:
        for r in range(args.rounds):
            order = ("raw", "unimq") if r % 2 == 0 else ("unimq", "raw")
            for side in order:
                queue = f"bench-{side}-{uuid.uuid4().hex[:8]}"
                if side == "raw":
                    result = await asyncio.to_thread(raw_run, client, queue, args.messages, body, args.concurrency)
                else:
                    result = await unimq_run(broker, queue, args.messages, body.encode(), args.concurrency)
                runs[side].append(result)
                print(f"round {r + 1} {side:<5} produce {result[0]:8,.0f} msg/s  consume {result[1]:8,.0f} msg/s",
                      flush=True)
    summary: dict[str, Any] = {"url": parse_url(args.url).redacted(), "messages": args.messages,
                               "size": args.size, "batch": BATCH, "concurrency": args.concurrency,
                               "rounds": args.rounds}
    for i, phase in enumerate(("produce", "consume")):
        raw = statistics.median(x[i] for x in runs["raw"])
        uni = statistics.median(x[i] for x in runs["unimq"])
        summary[phase] = {"raw_msg_s": raw, "unimq_msg_s": uni, "ratio": uni / raw}
        print(f"{phase:<8} median of {args.rounds}: boto3 {raw:8,.0f} msg/s  unimq {uni:8,.0f} msg/s  "
              f"ratio {uni / raw:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**summary, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    asyncio.run(main())
