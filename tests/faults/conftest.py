"""Fault tests stop and start real brokers through scripts/brokers; they run one at a time."""

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from unimq.errors import ConfigError
from unimq.testing.brokers import Provisioner, select_targets

ROOT = Path(__file__).resolve().parents[2]
_provisioner = Provisioner()


@pytest.fixture(scope="session")
def broker_url() -> Callable[[str], str]:
    def resolve(target: str) -> str:
        try:
            (chosen,) = select_targets([target])
        except ConfigError as exc:
            problem = str(exc)
        else:
            resolution = _provisioner.resolve(chosen)
            if resolution.url is not None:
                if resolution.how != "scripts/brokers":
                    pytest.skip(f"{target}: fault tests stop and start brokers via scripts/brokers only")
                return resolution.url
            problem = resolution.problem
        if os.environ.get("CI") == "true":
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)

    return resolve


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
