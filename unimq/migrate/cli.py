"""``unimq migrate dual|replay|mirror|drain|verify``: the migration toolkit for people."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

import unimq
from unimq.cliargs import count_arg, natural_arg, positive_seconds_arg, seconds_arg
from unimq.errors import ConfigError
from unimq.migrate.bridge import Mirror, MirrorStats, drain, verify
from unimq.migrate.publish import DualProducer, Policy


async def cmd_dual(args: argparse.Namespace) -> int:
    """Send each stdin line to both backends (a smoke test of the dual-publish stage)."""
    if args.policy == Policy.PRIMARY.value and not args.journal:
        raise ConfigError("migrate dual: --policy primary needs --journal DIRECTORY, where messages the new "
                          "backend refuses are kept for `unimq migrate replay`")
    new_destination = args.new_destination or args.destination
    if args.old_url == args.new_url and new_destination == args.destination:
        raise ConfigError("migrate dual: the old and the new side are the same URL and destination; "
                          "every message would be sent twice to one place")
    async with unimq.connect(args.old_url) as old, unimq.connect(args.new_url) as new:
        dual = DualProducer(old.producer(args.destination), new.producer(new_destination),
                            policy=args.policy, journal=args.journal)
        async with dual:
            for line in sys.stdin.buffer:
                await dual.send(line.rstrip(b"\n"), key=args.key)
        print(json.dumps(asdict(dual.stats)))
    return 0


async def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a primary-policy journal into the new backend."""
    async with unimq.connect(args.new_url) as new:
        dual = DualProducer(new.producer(args.destination), new.producer(args.destination),
                            policy=Policy.PRIMARY, journal=args.journal)
        landed = await dual.replay()
        left = len(dual.journal) if dual.journal is not None else 0
        print(f"replayed {landed}; {left} still journaled")
        return 0 if left == 0 else 1


def _progress(stats: MirrorStats) -> None:
    print(f"\rforwarded {stats.forwarded}  loops skipped {stats.skipped_loops}  failed {stats.failed}",
          end="", file=sys.stderr, flush=True)


async def cmd_mirror(args: argparse.Namespace) -> int:
    if args.source_url == args.target_url and args.source_dest == args.target_dest:
        raise ConfigError("migrate mirror: the source and the target are the same URL and destination; "
                          "mirroring a destination into itself would forward every message forever")
    async with unimq.connect(args.source_url) as source, unimq.connect(args.target_url) as target:
        mirror = Mirror(source, args.source_dest, target, args.target_dest, group=args.group,
                        origin=args.origin, target_origin=args.target_origin, batch=args.batch)
        stats = await mirror.run(idle=args.until_idle, on_batch=_progress)
        print(file=sys.stderr)
        print(json.dumps(asdict(stats)))
    return 0


async def cmd_drain(args: argparse.Namespace) -> int:
    if args.into_url and args.into_url == args.url and (args.into_dest or args.destination) == args.destination:
        raise ConfigError("migrate drain: --into-url/--into-dest is the destination being drained")
    async with unimq.connect(args.url) as broker:
        if args.into_url:
            async with unimq.connect(args.into_url) as target:
                count = await drain(broker, args.destination, group=args.group,
                                    into=(target, args.into_dest or args.destination), idle=args.idle)
        else:
            async def discard(delivery: unimq.Delivery) -> None:
                sys.stdout.buffer.write(delivery.message.body + b"\n")

            count = await drain(broker, args.destination, group=args.group, handler=discard, idle=args.idle)
    print(f"drained {count} messages", file=sys.stderr)
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    async with unimq.connect(args.old_url) as old, unimq.connect(args.new_url) as new:
        report = await verify(old, args.old_dest, new, args.new_dest, group=args.group, idle=args.idle)
    print(json.dumps(asdict(report), indent=2) if args.json else report.summary())
    return 0 if report.ok(args.tolerance) else 1


def journal_arg(path: str) -> str:
    """An existing journal directory (argparse ``type``): a typo must not start an empty journal."""
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"no journal directory at {path!r} (the --journal given to "
                                         "`unimq migrate dual --policy primary`)")
    return path


def register(sub: argparse._SubParsersAction[Any]) -> None:
    migrate = sub.add_parser("migrate", help="move traffic between backends: dual, replay, mirror, drain, verify")
    steps = migrate.add_subparsers(dest="step", required=True)

    p = steps.add_parser("dual", help="send stdin lines to the old and the new backend")
    p.add_argument("old_url")
    p.add_argument("new_url")
    p.add_argument("destination")
    p.add_argument("--new-destination")
    p.add_argument("--policy", choices=[p.value for p in Policy], default="both")
    p.add_argument("--journal", help="directory of the replay journal (required for --policy primary)")
    p.add_argument("--key")
    p.set_defaults(func=cmd_dual)

    p = steps.add_parser("replay", help="replay a dual-publish journal into the new backend")
    p.add_argument("new_url")
    p.add_argument("destination")
    p.add_argument("--journal", type=journal_arg, required=True)
    p.set_defaults(func=cmd_replay)

    p = steps.add_parser("mirror", help="forward a destination to another backend (at-least-once)")
    p.add_argument("source_url")
    p.add_argument("source_dest")
    p.add_argument("target_url")
    p.add_argument("target_dest")
    p.add_argument("--group", default="unimq-mirror")
    p.add_argument("--origin", help="label of the source side (default: its URL)")
    p.add_argument("--target-origin", help="label of the target side (default: its URL)")
    p.add_argument("--batch", type=count_arg, default=500)
    p.add_argument("--until-idle", type=positive_seconds_arg,
                   help="stop after this many idle seconds (default: run forever)")
    p.set_defaults(func=cmd_mirror)

    p = steps.add_parser("drain", help="consume a destination until it is empty and idle")
    p.add_argument("url")
    p.add_argument("destination")
    p.add_argument("--group")
    p.add_argument("--into-url", help="forward to this backend instead of printing bodies")
    p.add_argument("--into-dest")
    p.add_argument("--idle", type=seconds_arg, default=5.0)
    p.set_defaults(func=cmd_drain)

    p = steps.add_parser("verify", help="compare both sides; exit 1 beyond --tolerance")
    p.add_argument("old_url")
    p.add_argument("old_dest")
    p.add_argument("new_url")
    p.add_argument("new_dest")
    p.add_argument("--group", default="unimq-verify")
    p.add_argument("--idle", type=seconds_arg, default=5.0)
    p.add_argument("--tolerance", type=natural_arg, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

