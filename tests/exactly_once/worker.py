"""A consumer process for the exactly-once proofs (run by path from test_processes.py).

It consumes DEST through ``broker.consume(..., idempotency=store)`` and applies one effect per
message: a row in an effects table written in the SQL inbox's transaction (``--store sql``), or an
entry in a Redis list (``--store redis``). For ``--crash-every`` N-th message id (decided by the
id, and only once per id: an O_EXCL marker file), the process SIGKILLs itself mid-handler, while
holding the claim: after writing the effect inside the uncommitted transaction (sql), or before
the effect (redis, whose mark is not transactional with the effect).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import zlib
from pathlib import Path
from typing import Any

import unimq
from unimq.idempotency import SqlInbox, current
from unimq.message import Delivery
from unimq.reliability import Retry


def crash_now(message_id: str, every: int, markers: Path) -> bool:
    if every <= 0 or zlib.crc32(message_id.encode()) % every != 0:
        return False
    try:
        os.close(os.open(markers / message_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


async def main(args: argparse.Namespace) -> None:
    from sqlalchemy import text

    engine: Any = None
    redis: Any = None
    if args.store == "sql":
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(args.db)
        store: Any = SqlInbox(engine, consumer="proof", table=args.inbox, wait=5.0)
    else:
        import redis.asyncio as aioredis
        from unimq_redis.idempotency import RedisStore

        redis = aioredis.from_url(args.redis)
        store = RedisStore(redis, prefix=args.prefix, lease=args.lease, wait=2 * args.lease)
    markers = Path(args.markers)

    async def handler(delivery: Delivery) -> None:
        message_id = delivery.message.message_id
        await asyncio.sleep(random.uniform(0, 0.02))
        crash = crash_now(message_id, args.crash_every, markers)
        if args.store == "sql":
            await current().transaction.execute(text(f"INSERT INTO {args.effects} (message_id, pid) VALUES (:m, :p)"),
                                                {"m": message_id, "p": os.getpid()})
            if crash:
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            if crash:
                os.kill(os.getpid(), signal.SIGKILL)
            await redis.rpush(args.effects, message_id)

    try:
        async with unimq.connect(args.url) as broker:
            lock = args.lock if broker.capabilities.lock_timeout else None  # else a URL option (redis)
            await broker.consume(args.dest, handler, group=args.group or None, concurrency=args.concurrency,
                                 idempotency=store,
                                 lock_timeout=lock, retry=Retry(max_attempts=50, initial=0.05, max_delay=0.5),
                                 handle_signals=True, shutdown_timeout=5.0)
    finally:
        if engine is not None:
            await engine.dispose()
        if redis is not None:
            await redis.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--group", default="")
    parser.add_argument("--store", choices=["sql", "redis"], required=True)
    parser.add_argument("--db")
    parser.add_argument("--inbox")
    parser.add_argument("--effects", required=True)
    parser.add_argument("--redis")
    parser.add_argument("--prefix")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--lock", type=float, default=2.0)
    parser.add_argument("--crash-every", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--markers", required=True)
    asyncio.run(main(parser.parse_args()))
