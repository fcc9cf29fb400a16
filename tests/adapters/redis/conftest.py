"""Fixtures for the Redis adapter tests: a real Redis (``scripts/brokers up redis``), unique names."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

import unimq

REDIS_URL = os.environ.get("UNIMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def dest() -> str:
    return f"t-redis-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def rbroker(dest: str) -> AsyncIterator[unimq.Broker]:
    broker = await unimq.connect(REDIS_URL, maintenance_interval=0.1)
    try:
        yield broker
    finally:
        await broker.delete(dest)
        await broker.close()


@pytest_asyncio.fixture
async def plain() -> AsyncIterator[Redis]:
    """A plain redis-py client, as an application without unimq would use."""
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()
