"""Kafka through librdkafka (``kafka://...?client=confluent``) vs plain aiokafka, on the shared harness.

The raw contender is ``kafka_bench``'s: aiokafka at its best practice (``getmany`` + a commit every
100 ms; a chunk of 10,000 ``send`` futures awaited together; acks=all, idempotent, linger 5 ms,
64 KiB batches). ``unimq`` is the confluent driver through the public API with the same producer
settings: ``send_many``, and ``receive_batch(1000)`` + ``ack_many`` (contiguous-offset commits);
``unimq-loop`` is the per-message ``async for`` + ``ack()`` path, measured beside the batch API by
default. Consume counts from the first record (group join excluded). Defaults keep one run near
a minute: 100 B and 1 KiB, batching on, one producer/consumer, produce and consume, five
interleaved repetitions of 30,000 messages (10,000 records of 100 B fit one fetch: the raw side
would be timed on a single ``getmany``). ``--ops consume`` takes ~40 s.

    .venv/bin/python benchmarks/kafka_confluent_bench.py [--ops consume] [--contenders raw,unimq] [harness options]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from dataclasses import asdict

from harness import Backend, Contender, UnimqContender, add_arguments, run_backend, selection, table
from kafka_bench import PREFETCH, AioKafka, UnimqLoop

from unimq.url import parse_url


def _ensure(w: object) -> dict[str, object]:
    return {"partitions": max(1, getattr(w, "concurrency", 1)), "dead_letter": False}


def contenders(url: str) -> list[Contender]:
    confluent = url + ("&" if "?" in url else "?") + "client=confluent"
    return [
        AioKafka(url),
        UnimqContender(confluent, prefetch=PREFETCH, receive_batch=PREFETCH, group=lambda dest: f"{dest}-unimq",
                       ensure=_ensure),
        UnimqLoop(confluent, prefetch=PREFETCH, group=lambda dest: f"{dest}-unimq", ensure=_ensure,
                  fill_by="unimq"),
    ]


BACKEND = Backend(
    name="kafka",
    default_url="kafka://127.0.0.1:9092",
    contenders=contenders,
    quick_count=30_000,
    full_count=100_000,
    consume_from_first=True,
    notes=["raw: aiokafka (getmany + commit every 100 ms; 10,000 send futures then await)",
           "unimq: kafka://...?client=confluent (librdkafka), send_many; receive_batch(1000) + ack_many",
           "producers: acks=all, idempotent, linger 5 ms, 64 KiB batches on both sides",
           "consume counted from the first record (group join excluded)"],
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, os.environ.get("UNIMQ_TEST_KAFKA_URL", BACKEND.default_url))
    parser.set_defaults(quick=True, sizes="100,1024", batch="on", concurrency="1", ops="produce,consume",
                        contenders="raw,unimq,unimq-loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sizes, batches, concurrencies, ops, only = selection(args)
    profile = BACKEND.profile(args.quick, args.repeat)
    if args.count:
        profile.count = args.count
    figures = asyncio.run(run_backend(BACKEND, args.url, profile, sizes, batches, concurrencies, ops, only))
    print(table(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": "kafka-confluent", "url": parse_url(args.url).redacted(),
                       "profile": asdict(profile), "notes": BACKEND.notes,
                       "figures": [asdict(x) for x in figures]}, f, indent=2)


if __name__ == "__main__":
    main()
