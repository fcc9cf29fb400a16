"""Fixtures for the confluent-kafka driver tests: the broker of ``scripts/brokers up kafka``, reached
through both drivers (the ``kafka-confluent`` and ``kafka`` conformance targets)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest

import unimq


@pytest.fixture
async def confluent(broker_url: Callable[[str], str]) -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(broker_url("kafka-confluent")) as b:
        yield b


@pytest.fixture
async def aiokafka(broker_url: Callable[[str], str]) -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(broker_url("kafka")) as b:
        yield b


@pytest.fixture
async def topic(aiokafka: unimq.Broker) -> AsyncIterator[str]:
    """A fresh topic name; the topic, its retry and dead-letter topics are deleted afterwards."""
    name = f"ut-kafka-cf-{uuid.uuid4().hex[:10]}"
    yield name
    await aiokafka.delete(name)
