"""The ``unimq`` command line: demo, send, consume, capabilities, backends, peek, stats, ls, mcp.

Every command takes a broker URL (default ``$UNIMQ_URL``, else ``memory://``). Every error, for
any input, prints as one line naming the problem, with no traceback and no secret, and exits
with status 2: usage errors included (:class:`_Parser` turns them into ConfigErrors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, NoReturn

import unimq
from unimq import registry
from unimq.cliargs import (
    count_arg,
    header_arg,
    natural_arg,
    port_arg,
    positive_float_arg,
    positive_seconds_arg,
    seconds_arg,
    sizes_arg,
)
from unimq.errors import ConfigError, Secrets, UnimqError, scrub
from unimq.message import Delivery

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are ConfigErrors, printed as one line by :func:`main`."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def _url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("UNIMQ_URL") or "memory://")


def _body(args: argparse.Namespace) -> bytes:
    """The body from --file, the argument (its bytes as given, UTF-8 or not), or stdin."""
    if args.file is not None:
        if args.body is not None:
            raise ConfigError("send: give the body as an argument or with --file, not both")
        try:
            with open(args.file, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ConfigError(f"send: cannot read --file {args.file!r}: {exc.strerror or exc}") from None
    if args.body in (None, "-"):
        return sys.stdin.buffer.read()
    return os.fsencode(args.body)


async def cmd_send(args: argparse.Namespace) -> int:
    body = _body(args)
    async with unimq.connect(_url(args)) as broker:
        limit = broker.capabilities_for(args.destination).delayed_delivery.limit
        if args.delay and limit is not None and args.delay > limit:
            raise ConfigError(f"send: --delay {args.delay:g} is over the {broker.backend} limit of {limit:g} seconds")
        message = await broker.producer(args.destination).send(
            body, key=args.key, headers=dict(args.header), correlation_id=args.correlation_id,
            reply_to=args.reply_to, priority=args.priority,
            delay=timedelta(seconds=args.delay) if args.delay else None,
            ttl=timedelta(seconds=args.ttl) if args.ttl is not None else None,
        )
    print(message.message_id)
    return 0


async def cmd_consume(args: argparse.Namespace) -> int:
    async with unimq.connect(_url(args)) as broker, broker.consumer(args.destination, args.group) as consumer:
        received = 0
        while args.count is None or received < args.count:
            delivery = await consumer.receive(timeout=args.wait)
            if delivery is None:
                break
            _print_delivery(delivery, as_json=args.json)
            if not args.no_ack:
                await delivery.ack()
            received += 1
    return 0


def _print_delivery(delivery: Delivery, as_json: bool) -> None:
    """The body as text, or with --json the message view the MCP tools return (base64 when binary)."""
    from unimq import inspect

    if as_json:
        print(inspect.message_view(delivery.message, attempt=delivery.attempt).model_dump_json())
    else:
        print(delivery.message.body.decode(errors="replace"))


async def cmd_capabilities(args: argparse.Namespace) -> int:
    async with unimq.connect(_url(args)) as broker:
        caps = broker.capabilities_for(args.destination) if args.destination else broker.capabilities
        print(caps.to_json() if args.json else caps.table())
    return 0


async def cmd_backends(args: argparse.Namespace) -> int:
    installed = registry.installed()
    print(f"{'scheme':<12} {'adapter':<40} status")
    for scheme in sorted(set(installed) | set(registry.KNOWN_EXTRAS)):
        if scheme in installed:
            print(f"{scheme + '://':<12} {installed[scheme].value:<40} installed")
        else:
            print(f"{scheme + '://':<12} {'':<40} pip install \"unimq[{registry.KNOWN_EXTRAS[scheme]}]\"")
    return 0


async def cmd_bench(args: argparse.Namespace) -> int:
    from unimq import bench

    sizes: list[int] = args.sizes
    results = await bench.run(_url(args), bench.workloads(args.quick, sizes), args.repeat, args.rate,
                              args.latency_seconds)
    print(bench.table(results))
    if args.json:
        with open(args.json, "w") as f:  # noqa: ASYNC230 - once, after the measurements
            json.dump(bench.as_json(results), f, indent=2)
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from unimq.demo import run_demo

    return await run_demo(_url(args), args.orders)


async def cmd_peek(args: argparse.Namespace) -> int:
    from unimq import inspect

    async with unimq.connect(_url(args)) as broker:
        for view in await inspect.peek(broker, args.destination, args.count):
            if args.json:
                print(view.model_dump_json())
            else:
                meta = {k: v for k, v in view.model_dump(exclude={"body", "body_bytes", "truncated"}).items() if v}
                print(" ".join(f"{k}={v}" for k, v in meta.items()))
                print(f"  {view.body}")
    return 0


async def cmd_stats(args: argparse.Namespace) -> int:
    from unimq import inspect

    async with unimq.connect(_url(args)) as broker:
        props = await inspect.destination_properties(broker, args.destination, args.group)
    if args.json:
        print(props.model_dump_json(indent=2))
        return 0
    for name in ("destination", "group", "backend", "depth", "in_flight", "dead_letter_depth",
                 "dead_letter_destination", "lag"):
        value = getattr(props, name)
        print(f"{name:<24} {'-' if value is None else value}")
    for name, value in props.detail.items():
        print(f"{name:<24} {value}")
    return 0


async def cmd_ls(args: argparse.Namespace) -> int:
    from unimq import inspect

    async with unimq.connect(_url(args)) as broker:
        names = await inspect.list_destinations(broker)
    print(json.dumps(names) if args.json else "\n".join(names))
    return 0


async def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from unimq.mcp import Policy, serve
    except ImportError as exc:
        raise ConfigError(f'the MCP server needs the MCP SDK: pip install "unimq[mcp]" ({exc})') from None
    try:
        policy = Policy(
            allow_write=args.allow_write, allow_destinations=tuple(args.allow_destination),
            max_body_bytes=args.max_body_bytes, max_count=args.max_count, max_wait=args.max_wait,
            lock_seconds=args.lock_seconds, create_destinations=args.create_destinations,
            allow_purge=args.allow_purge,
        )
    except ValueError as exc:
        raise ConfigError(f"mcp options: {' '.join(str(exc).split())}") from None
    await serve(_url(args), policy, http=args.http, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unimq", description="One interface over many message brokers.")
    parser.add_argument("--version", action="version", version=f"unimq {unimq.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Command, help_text: str, url: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if url:
            p.add_argument("url", nargs="?", help="broker URL (default: $UNIMQ_URL, else memory://)")
        p.set_defaults(func=func)
        return p

    p = command("demo", cmd_demo, "run a small pipeline: sends, acks, retries with backoff, dead-lettered poison")
    p.add_argument("--orders", type=count_arg, default=200, help="how many orders to send (at least 14)")

    p = command("send", cmd_send, "send one message (body from the argument, or stdin with -)", url=False)
    p.add_argument("url")
    p.add_argument("destination")
    p.add_argument("body", nargs="?", help="message body; '-' or absent reads stdin")
    p.add_argument("--file", help="read the body from this file")
    p.add_argument("--key")
    p.add_argument("--header", "-H", type=header_arg, action="append", default=[], metavar="K=V")
    p.add_argument("--correlation-id")
    p.add_argument("--reply-to", help="destination the receiver should reply to")
    p.add_argument("--priority", type=natural_arg, help="0 (lowest) and up, where the backend has priorities")
    p.add_argument("--delay", type=seconds_arg, help="seconds before the message is delivered")
    p.add_argument("--ttl", type=positive_seconds_arg, help="seconds before the message expires")

    p = command("consume", cmd_consume, "receive messages and print their bodies", url=False)
    p.add_argument("url")
    p.add_argument("destination")
    p.add_argument("--group")
    p.add_argument("--count", type=count_arg, help="stop after this many (default: until idle)")
    p.add_argument("--wait", type=seconds_arg, default=5.0, help="stop after this many idle seconds")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per message: the MCP message view (base64 for binary bodies)")
    p.add_argument("--no-ack", action="store_true", help="leave messages unacknowledged (they will be redelivered)")

    p = command("capabilities", cmd_capabilities, "print the backend's capability flags")
    p.add_argument("--json", action="store_true")
    p.add_argument("--destination", help="capabilities of one destination, where they differ")

    command("backends", cmd_backends, "list installed adapters and their URL schemes", url=False)

    p = command("peek", cmd_peek, "show waiting messages without consuming them", url=False)
    p.add_argument("url")
    p.add_argument("destination")
    p.add_argument("--count", type=count_arg, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object per message")

    p = command("stats", cmd_stats, "show depth, in-flight, dead-letter depth and lag of a destination", url=False)
    p.add_argument("url")
    p.add_argument("destination")
    p.add_argument("--group")
    p.add_argument("--json", action="store_true")

    p = command("ls", cmd_ls, "list destinations")
    p.add_argument("--json", action="store_true")

    p = command("mcp", cmd_mcp, "serve queue tools to AI assistants (Model Context Protocol); see docs/mcp.md")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP at http://HOST:PORT/mcp, not stdio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_arg, default=8765)
    p.add_argument("--allow-write", action="store_true",
                   help="enable send_message, receive_messages, settle_message and request_reply")
    p.add_argument("--allow-destination", action="append", default=[], metavar="GLOB",
                   help="only these destinations (repeatable, glob patterns); default: all")
    p.add_argument("--max-body-bytes", type=count_arg, default=256 * 1024, help="largest body sent or shown")
    p.add_argument("--max-count", type=count_arg, default=50, help="most messages per peek or receive")
    p.add_argument("--max-wait", type=positive_seconds_arg, default=60.0, help="longest wait in seconds")
    p.add_argument("--lock-seconds", type=positive_seconds_arg, default=60.0,
                   help="how long receive lock handles live")
    p.add_argument("--create-destinations", action="store_true",
                   help="let send_message and request_reply create destinations that do not exist")
    p.add_argument("--allow-purge", action="store_true", help="enable the purge tool (see docs/operations.md)")

    p = command("bench", cmd_bench, "measure produce, consume and end-to-end latency through unimq")
    p.add_argument("--quick", action="store_true", help="small counts (seconds, not minutes)")
    p.add_argument("--sizes", type=sizes_arg, default="100,1024,65536",
                   help="message sizes in bytes, comma-separated")
    p.add_argument("--repeat", type=count_arg, default=5, help="repetitions; the median is reported")
    p.add_argument("--rate", type=positive_float_arg, default=200.0, help="offered rate for the latency run, msg/s")
    p.add_argument("--latency-seconds", type=positive_seconds_arg, default=5.0)
    p.add_argument("--json", help="also write the results to this file")

    from unimq.migrate import cli as migrate_cli

    migrate_cli.register(sub)
    from unimq.app.cli import add_commands as add_app_commands

    add_app_commands(sub, command)
    __import__("unimq.outbox_cli").outbox_cli.add_commands(sub, command)
    __import__("unimq.ops_cli").ops_cli.add_commands(sub, command)
    return parser


def _secrets_of(args: argparse.Namespace | None) -> list[Secrets]:
    """The secrets of every URL among ``args``: for errors raised outside their connection's context."""
    from unimq.url import parse_url

    scopes = []
    for name, value in vars(args or argparse.Namespace()).items():
        if isinstance(value, str) and (name == "url" or name.endswith("_url")):
            try:
                scopes.append(parse_url(value).secrets)
            except UnimqError:
                continue
    return scopes


def main(argv: list[str] | None = None) -> int:
    """Run one command; any failure is one line on stderr and exit status 2."""
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        code: int = asyncio.run(args.func(args))
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        while isinstance(exc, ExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]  # a task group's first failure says what went wrong
        line = f"{type(exc).__name__}: {exc}"
    print(f"unimq: {scrub(' '.join(line.split()), [*_secrets_of(args)])}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
