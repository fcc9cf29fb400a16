"""Private nats-servers for the NATS adapter tests (the binary ``scripts/brokers up nats`` builds)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

NATS_SERVER = Path(__file__).resolve().parents[3] / ".brokers" / "nats" / "bin" / "nats-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_server(args: list[str], port: int, log: Path) -> Iterator[None]:
    """Run ``nats-server <args>`` (listening on ``port``, output to ``log``) until the block ends."""
    if not NATS_SERVER.exists():
        pytest.fail(f"{NATS_SERVER} is not there (scripts/brokers up nats builds it)")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(NATS_SERVER), *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(10)
