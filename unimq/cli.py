"""The ``unimq`` command line: demo, send, consume, capabilities, backends, peek, stats, ls, mcp.

Every command takes a broker URL (default ``$UNIMQ_URL``, else ``memory://``). Errors print as
one line naming the problem, with no traceback and no secret, and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import unimq
from unimq import registry
from unimq.errors import ConfigError, UnimqError
from unimq.message import Delivery
from unimq.migrate import cli as migrate_cli

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("UNIMQ_URL") or "memory://")


async def cmd_send(args: argparse.Namespace) -> int:
    body = sys.stdin.buffer.read() if args.body in (None, "-") else args.body.encode()
    headers = dict(h.split("=", 1) for h in args.header)
    async with unimq.connect(_url(args)) as broker:
        message = await broker.producer(args.destination).send(
            body, key=args.key, headers=headers, correlation_id=args.correlation_id,
            delay=timedelta(seconds=args.delay) if args.delay else None,
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
    m = delivery.message
    if as_json:
        print(json.dumps({
            "message_id": m.message_id, "key": m.key, "headers": m.headers, "correlation_id": m.correlation_id,
            "attempt": delivery.attempt, "body": m.body.decode(errors="replace"),
        }))
    else:
        print(m.body.decode(errors="replace"))


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

    sizes = [int(s) for s in args.sizes.split(",")]
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
        )
    except ValueError as exc:
        raise ConfigError(f"mcp options: {exc}") from None
    await serve(_url(args), policy, http=args.http, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimq", description="One interface over many message brokers.")
    parser.add_argument("--version", action="version", version=f"unimq {unimq.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Command, help_text: str, url: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if url:
            p.add_argument("url", nargs="?", help="broker URL (default: $UNIMQ_URL, else memory://)")
        p.set_defaults(func=func)
        return p

    p = command("demo", cmd_demo, "run a small pipeline: sends, acks, retries with backoff, dead-lettered poison")
    p.add_argument("--orders", type=int, default=200, help="how many orders to send")

    p = command("send", cmd_send, "send one message (body from the argument, or stdin with -)", url=False)
    p.add_argument("url")
    p.add_argument("destination")
    p.add_argument("body", nargs="?", help="message body; '-' or absent reads stdin")
    p.add_argument("--key")
    p.add_argument("--header", "-H", action="append", default=[], metavar="K=V")
    p.add_argument("--correlation-id")
    p.add_argument("--delay", type=float, help="seconds")

    p = command("consume", cmd_consume, "receive messages and print their bodies", url=False)
    p.add_argument("url")
    p.add_argument("destination")
    p.add_argument("--group")
    p.add_argument("--count", type=int, help="stop after this many (default: until idle)")
    p.add_argument("--wait", type=float, default=5.0, help="stop after this many idle seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object per message")
    p.add_argument("--no-ack", action="store_true", help="leave messages unacknowledged (they will be redelivered)")

    p = command("capabilities", cmd_capabilities, "print the backend's capability flags")
    p.add_argument("--json", action="store_true")
    p.add_argument("--destination", help="capabilities of one destination, where they differ")

    command("backends", cmd_backends, "list installed adapters and their URL schemes", url=False)

    p = command("peek", cmd_peek, "show waiting messages without consuming them", url=False)
    p.add_argument("url")
    p.add_argument("destination")
    p.add_argument("--count", type=int, default=10)
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
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--allow-write", action="store_true",
                   help="enable send_message, receive_messages, settle_message and request_reply")
    p.add_argument("--allow-destination", action="append", default=[], metavar="GLOB",
                   help="only these destinations (repeatable, glob patterns); default: all")
    p.add_argument("--max-body-bytes", type=int, default=256 * 1024, help="largest body sent or shown")
    p.add_argument("--max-count", type=int, default=50, help="most messages per peek or receive")
    p.add_argument("--max-wait", type=float, default=60.0, help="longest wait in seconds")
    p.add_argument("--lock-seconds", type=float, default=60.0, help="how long receive lock handles live")
    p.add_argument("--create-destinations", action="store_true",
                   help="let send_message and request_reply create destinations that do not exist")

    p = command("bench", cmd_bench, "measure produce, consume and end-to-end latency through unimq")
    p.add_argument("--quick", action="store_true", help="small counts (seconds, not minutes)")
    p.add_argument("--sizes", default="100,1024,65536", help="message sizes in bytes, comma-separated")
    p.add_argument("--repeat", type=int, default=5, help="repetitions; the median is reported")
    p.add_argument("--rate", type=float, default=200.0, help="offered rate for the latency run, msg/s")
    p.add_argument("--latency-seconds", type=float, default=5.0)
    p.add_argument("--json", help="also write the results to this file")

    migrate_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = asyncio.run(args.func(args))
        return code
    except UnimqError as exc:
        print(f"unimq: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
