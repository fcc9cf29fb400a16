"""Fault tests stop and start real brokers through scripts/brokers; they run one at a time."""

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from unimq.testing.brokers import require

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def broker_url() -> Callable[[str], str]:
    """Like the shared fixture, but only brokers that scripts/brokers can stop and start."""

    def url(target: str) -> str:
        resolution = require(target)
        if resolution.how != "scripts/brokers":
            pytest.skip(f"{target}: fault tests stop and start brokers via scripts/brokers only")
        return str(resolution.url)

    return url


@pytest.fixture
def brokers() -> Callable[..., Awaitable[None]]:
    """``await brokers("stop", "nats")``: run scripts/brokers without blocking the event loop."""

    async def run(command: str, backend: str) -> None:
        proc = await asyncio.to_thread(
            subprocess.run, [str(ROOT / "scripts" / "brokers"), command, backend],
            capture_output=True, text=True, timeout=180,
        )
        assert proc.returncode == 0, f"scripts/brokers {command} {backend} failed:\n{proc.stdout}\n{proc.stderr}"

    return run
