"""``unimq dlq ls|peek|redrive|purge`` and ``unimq health``: operate queues from a shell or a probe.

Thin wrappers of :mod:`unimq.operations`. Errors are left to :func:`unimq.cli.main`, which prints
each as one line on stderr and exits 2. ``unimq health`` exits 0 when the broker answers and 1 when
it does not (an unreachable broker is a probe result, not an error), with one line either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import unimq
from unimq import inspect
from unimq.cliargs import count_arg, positive_float_arg, positive_seconds_arg
from unimq.errors import ConfigError, UnimqError
from unimq.operations import DeadLetter


def _url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("UNIMQ_URL") or "memory://")


def group_arg(text: str) -> str:
    """A consumer group name: not empty (an empty one would silently mean every group)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a group name must not be empty (omit --group for every group)")
    return text


def _summary(letter: DeadLetter) -> str:
    """One line: id, attempt, group, when, why (``-`` where the backend did not say)."""
    when = letter.time.isoformat(timespec="seconds") if letter.time else "-"
    return (f"{letter.message.message_id}  attempt={letter.attempt or '-'}  group={letter.group or '-'}  "
            f"at={when}  reason={letter.reason or '-'}")


def letter_view(letter: DeadLetter, max_bytes: int | None = None) -> dict[str, Any]:
    """The MCP message view of a dead letter, plus why, from where and when it was dead-lettered."""
    view = inspect.message_view(letter.message, max_bytes=max_bytes).model_dump()
    view.update(reason=letter.reason, source=letter.source, group=letter.group, dead_letter_attempt=letter.attempt,
                dead_lettered_at=letter.time.isoformat() if letter.time else None)
    return view


async def _letters(args: argparse.Namespace) -> list[DeadLetter]:
    async with unimq.connect(_url(args)) as broker:
        await inspect.check_destination(broker, args.destination)
        return await broker.dead_letters(args.destination, args.group, args.count)


async def cmd_dlq_ls(args: argparse.Namespace) -> int:
    letters = await _letters(args)
    for letter in letters:
        print(json.dumps(letter_view(letter)) if args.json else _summary(letter))
    if not args.json:
        print(f"{len(letters)} dead letter(s) of {args.destination}")
    return 0


async def cmd_dlq_peek(args: argparse.Namespace) -> int:
    for letter in await _letters(args):
        view = letter_view(letter)
        print(_summary(letter))
        print(f"  {view['body']}")
    return 0


async def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    text: str | None = args.filter_reason
    chosen: Callable[[DeadLetter], bool] | None = None
    if text is not None:
        chosen = lambda letter: text in (letter.reason or "")  # noqa: E731 - a one-line predicate
    async with unimq.connect(_url(args)) as broker:
        await inspect.check_destination(broker, args.destination)
        report = await broker.redrive(args.destination, group=args.group, filter=chosen, limit=args.limit,
                                      rate=args.rate)
    print(f"moved={report.moved} skipped={report.skipped} failed={report.failed} "
          f"destination={args.destination}")
    for error in report.errors:
        print(f"failed: {' '.join(error.split())}")
    return 1 if report.failed else 0


async def cmd_dlq_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        raise ConfigError(f"dlq purge removes every dead letter of {args.destination!r} for good: "
                          "add --yes to confirm")
    async with unimq.connect(_url(args)) as broker:
        await inspect.check_destination(broker, args.destination)
        removed = await broker.purge(args.destination, dead_letters=True)
        dlq = broker.dead_letter_destination(args.destination)
    print(f"purged={removed} destination={args.destination} dead_letter_destination={dlq}")
    return 0


async def cmd_health(args: argparse.Namespace) -> int:
    """One line and 0 when the broker answers within --timeout; one line and 1 when it does not."""
    url = _url(args)
    quiet = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # client libraries log the same failure: the line below is the one
    try:
        async with asyncio.timeout(args.timeout), unimq.connect(url) as broker:
            health = await broker.health(args.timeout)
    except ConfigError:
        raise  # a URL or option to fix: exit 2 through main()
    except (UnimqError, OSError, TimeoutError) as exc:
        from unimq.url import parse_url

        problem = " ".join(f"{type(exc).__name__}: {exc or 'no answer within --timeout'}".split())
        print(f"unhealthy {parse_url(url).redacted()} {problem}")
        return 1
    finally:
        logging.disable(quiet)
    if not health.ok:
        print(f"unhealthy {health.backend} {health.url} {' '.join(str(health.error).split())}")
        return 1
    print(f"healthy {health.backend} {health.url} rtt_ms={health.rtt_ms or 0:.1f}")
    return 0


def add_commands(sub: Any, commands: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``dlq`` (with ls, peek, redrive, purge) and ``health`` on the ``unimq`` parser."""
    p = commands("health", cmd_health, "exit 0 if the broker answers, 1 if not (one line; for container probes)")
    p.add_argument("--timeout", type=positive_seconds_arg, default=5.0, help="seconds to wait for an answer")

    dlq = sub.add_parser("dlq", help="dead letters: list, peek, redrive, purge (see docs/operations.md)",
                         description="Read, redrive and purge the dead letters of a destination.")
    verbs = dlq.add_subparsers(dest="dlq_command", required=True)

    def verb(name: str, func: Callable[..., Any], help_text: str) -> argparse.ArgumentParser:
        v: argparse.ArgumentParser = verbs.add_parser(name, help=help_text, description=help_text)
        v.add_argument("url", nargs="?", help="broker URL (default: $UNIMQ_URL, else memory://)")
        v.add_argument("destination", help="the destination whose dead letters these are")
        v.set_defaults(func=func)
        return v

    for name, func, help_text in (("ls", cmd_dlq_ls, "list dead letters with their reason, group, attempt, time"),
                                  ("peek", cmd_dlq_peek, "show dead letters with their bodies")):
        v = verb(name, func, help_text)
        v.add_argument("--group", type=group_arg, help="only those dead-lettered by this consumer group")
        v.add_argument("--count", type=count_arg, default=10, help="how many (default 10)")
        if name == "ls":
            v.add_argument("--json", action="store_true", help="one JSON object per dead letter")

    v = verb("redrive", cmd_dlq_redrive, "move dead letters back to their destination (never losing one)")
    v.add_argument("--group", type=group_arg, help="only those dead-lettered by this consumer group")
    v.add_argument("--filter-reason", metavar="TEXT", help="only those whose reason contains TEXT")
    v.add_argument("--limit", type=count_arg, help="move at most this many")
    v.add_argument("--rate", type=positive_float_arg, help="at most this many per second")

    v = verb("purge", cmd_dlq_purge, "remove every dead letter of a destination")
    v.add_argument("--yes", action="store_true", help="confirm: purged messages are gone for good")
