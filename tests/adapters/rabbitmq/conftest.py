"""Fixtures for the RabbitMQ adapter tests: unique names, unimq brokers, plain aio-pika, a fault proxy."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
import pytest_asyncio
from rabbitmq_support import QUORUM_URL, RAW_URL, URL, FaultProxy

import unimq


@pytest.fixture
def dest() -> str:
    return f"rmq-test-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture(params=["classic", "quorum"])
async def broker(request: pytest.FixtureRequest, dest: str) -> AsyncIterator[unimq.Broker]:
    """A unimq broker on classic or quorum queues; deletes ``dest`` afterwards."""
    async with unimq.connect(URL if request.param == "classic" else QUORUM_URL) as connected:
        try:
            yield connected
        finally:
            with contextlib.suppress(Exception):
                await connected.delete(dest)


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel with publisher confirms."""
    connection = await aio_pika.connect_robust(RAW_URL)
    async with connection:
        yield await connection.channel(publisher_confirms=True, on_return_raises=True)


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    fault = FaultProxy()
    await fault.start()
    try:
        yield fault
    finally:
        await fault.close()
