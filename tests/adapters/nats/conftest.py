"""Fixtures for the NATS adapter tests: the nats-server of ``scripts/brokers up nats`` or ``UNIMQ_TEST_NATS_URL``.

Unreachable broker: skipped locally, a failure in CI (``CI=true``), never a silent pass.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

import unimq

NATS_URL = os.environ.get("UNIMQ_TEST_NATS_URL", "nats://127.0.0.1:4222")
CORE_URL = os.environ.get("UNIMQ_TEST_NATS_CORE_URL", "nats://127.0.0.1:4222?jetstream=false")
SERVER = "nats://" + NATS_URL.split("://", 1)[1].split("?", 1)[0].rsplit("@", 1)[-1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/adapters/nats" in str(item.path):
            item.add_marker(pytest.mark.needs_broker("nats"))


@pytest.fixture
def nats_url() -> str:
    return NATS_URL


@pytest.fixture
async def broker() -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(NATS_URL) as b:
        yield b


@pytest.fixture
async def core() -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(CORE_URL) as b:
        yield b


@pytest.fixture
async def raw() -> AsyncIterator[Client]:
    """A plain nats-py client, as an existing application would use it."""
    nc = await nats.connect(SERVER)
    yield nc
    await nc.close()


@pytest.fixture
async def dest(broker: unimq.Broker) -> AsyncIterator[str]:
    """A fresh destination (subject); its stream and dead-letter stream are deleted afterwards."""
    name = f"ut.nats.{uuid.uuid4().hex[:10]}"
    yield name
    await broker.delete(name)
