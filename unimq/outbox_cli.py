"""``unimq outbox relay|create|ddl``: run the transactional outbox's relay as its own process.

Imports SQLAlchemy only when a command runs, so the CLI works without the ``unimq[outbox]`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import unimq
from unimq.errors import ConfigError, UnimqError, register_secret, scrub_loggers

log = logging.getLogger("unimq.outbox")

#: Longest wait between two attempts to reach a broker that is down when the relay starts.
CONNECT_BACKOFF_MAX = 5.0

#: Plain database URLs get the async driver the extra installs.
_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


def async_database_url(url: str) -> str:
    """``postgresql://…`` → ``postgresql+asyncpg://…``, ``sqlite:///…`` → ``sqlite+aiosqlite:///…``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"database URL {url!r} has no scheme: use postgresql://… or sqlite:///path")
    return f"{_ASYNC_DRIVERS.get(scheme, scheme)}://{rest}"


def _engine(url: str) -> Any:
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.ext.asyncio import create_async_engine
    except ImportError:
        raise ConfigError("the outbox needs SQLAlchemy: pip install 'unimq[outbox]'") from None
    full = async_database_url(url)
    register_secret(make_url(full).password)  # never in an error line or a log record
    return create_async_engine(full)


async def cmd_relay(args: argparse.Namespace) -> int:
    """Relay until SIGTERM/SIGINT (or, with --until-idle, until nothing is left)."""
    from unimq.outbox import Outbox

    engine = _engine(args.db_url)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    scrub_loggers("unimq")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        outbox = Outbox(engine, table=args.table)
        if args.create_table:
            await outbox.create_table()
        broker = await _connect_when_up(args.broker_url, stop)
        if broker is None:
            return 0  # stopped before the broker came up
        async with broker:
            relay = outbox.relay(broker, batch=args.batch, poll=args.poll)
            await relay.run(stop, until_idle=args.until_idle)
        stats = relay.stats
        print(f"relayed {stats.relayed} in {stats.batches} batches; {stats.failures} failures retried; "
              f"{stats.dead} rows failed", file=sys.stderr)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await engine.dispose()
    return 0


async def _connect_when_up(url: str, stop: asyncio.Event) -> unimq.Broker | None:
    """The relay outlives a broker outage, one at its own start included (both started together,
    or the broker restarting): a retryable error is logged and retried, backing off to
    CONNECT_BACKOFF_MAX, until ``stop``. Anything else (a bad URL, wrong credentials) ends it."""
    delay = 0.1
    while not stop.is_set():
        try:
            return await unimq.connect(url)
        except UnimqError as exc:
            if not exc.retryable:
                raise
            log.warning("outbox relay: %s; retrying in %.1fs", exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, CONNECT_BACKOFF_MAX)
    return None


async def cmd_create(args: argparse.Namespace) -> int:
    from unimq.outbox import Outbox

    engine = _engine(args.db_url)
    try:
        await Outbox(engine, table=args.table).create_table()
    finally:
        await engine.dispose()
    return 0


async def cmd_ddl(args: argparse.Namespace) -> int:
    from unimq.outbox import Outbox

    for statement in Outbox(table=args.table).ddl(args.dialect):
        print(f"{statement};")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], command: Any = None) -> None:
    """Add ``unimq outbox ...`` to the CLI (``command``, the CLI's own helper, is not needed here)."""
    outbox = sub.add_parser("outbox", help="transactional outbox: relay, create, ddl (docs/exactly-once.md)")
    steps = outbox.add_subparsers(dest="step", required=True)

    p = steps.add_parser("relay", help="publish the outbox table's unsent rows to the broker, in order")
    p.add_argument("db_url", help="postgresql://user@host/db or sqlite:///path")
    p.add_argument("broker_url")
    p.add_argument("--table", default="unimq_outbox")
    p.add_argument("--batch", type=int, default=200, help="rows per transaction")
    p.add_argument("--poll", type=float, default=0.2, help="seconds between polls of an empty outbox")
    p.add_argument("--create-table", action="store_true", help="create the table first if it does not exist")
    p.add_argument("--until-idle", action="store_true", help="exit once the outbox is empty")
    p.set_defaults(func=cmd_relay)

    p = steps.add_parser("create", help="create the outbox table and its indexes")
    p.add_argument("db_url")
    p.add_argument("--table", default="unimq_outbox")
    p.set_defaults(func=cmd_create)

    p = steps.add_parser("ddl", help="print the outbox table's CREATE statements")
    p.add_argument("--dialect", choices=["postgresql", "sqlite"], default="postgresql")
    p.add_argument("--table", default="unimq_outbox")
    p.set_defaults(func=cmd_ddl)
