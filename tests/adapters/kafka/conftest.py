"""Fixtures for the Kafka adapter tests: the KRaft broker of ``scripts/brokers up kafka`` or ``UNIMQ_TEST_KAFKA_URL``.

Unreachable broker: skipped locally, a failure in CI (``CI=true``), never a silent pass.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

import unimq

KAFKA_URL = os.environ.get("UNIMQ_TEST_KAFKA_URL", "kafka://127.0.0.1:9092")
BOOTSTRAP = KAFKA_URL.split("://", 1)[1].split("?", 1)[0].rsplit("@", 1)[-1]
BROKER_TESTS = ("test_kafka_interop", "test_rebalance", "test_kafka_behaviour", "test_batches")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/adapters/kafka" in str(item.path) and item.path.stem in BROKER_TESTS:
            item.add_marker(pytest.mark.needs_broker("kafka"))


@pytest.fixture
async def broker() -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(KAFKA_URL) as b:
        yield b


@pytest.fixture
async def topic(broker: unimq.Broker) -> AsyncIterator[str]:
    """A fresh topic name; the topic, its retry and dead-letter topics are deleted afterwards."""
    name = f"ut-kafka-{uuid.uuid4().hex[:10]}"
    yield name
    await broker.delete(name)


@pytest.fixture
def bootstrap() -> str:
    """host:port list for plain aiokafka clients."""
    return BOOTSTRAP


@pytest.fixture
def kafka_url() -> str:
    return KAFKA_URL
