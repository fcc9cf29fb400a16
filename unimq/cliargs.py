"""Argument types of the ``unimq`` commands: each refuses a bad value with one line, before anything runs.

Shared by :mod:`unimq.cli` and :mod:`unimq.migrate.cli`; a value argparse cannot convert becomes
a usage error that ``unimq`` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import math

from unimq.inspect import MAX_SECONDS


def seconds_arg(text: str) -> float:
    """A finite duration in seconds, 0 to a year (argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration from 0 to {MAX_SECONDS:.0f} seconds (a year)")
    return value


def positive_seconds_arg(text: str) -> float:
    """Like :func:`seconds_arg`, above 0."""
    value = seconds_arg(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def count_arg(text: str, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` in ASCII digits (argparse ``type``)."""
    if not text.strip().isascii() or not text.strip().lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    value = int(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
    return value


def positive_float_arg(text: str) -> float:
    """A finite number above 0 (argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def natural_arg(text: str) -> int:
    """A whole number >= 0 (argparse ``type``)."""
    return count_arg(text, 0)


def port_arg(text: str) -> int:
    """A TCP port, 1-65535 (argparse ``type``)."""
    value = count_arg(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return value


def header_arg(text: str) -> tuple[str, str]:
    """``K=V`` with a non-empty K (argparse ``type``)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not K=V (a header name, '=', and a value)")
    return name, value


def sizes_arg(text: str) -> list[int]:
    """Comma-separated message sizes in bytes, each at least 1 (argparse ``type``)."""
    try:
        return [count_arg(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"--sizes {text[:40]!r}: {exc}") from None
