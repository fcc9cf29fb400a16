"""Shared by the double's tests: a private double on a free port and an SDK client of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from azure.servicebus.aio import ServiceBusClient
from unimq_servicebus.testing.double import ServiceBusDouble


@pytest.fixture
def double() -> Iterator[ServiceBusDouble]:
    server = ServiceBusDouble(port=0).start()
    yield server
    server.stop()


@pytest.fixture
async def client(double: ServiceBusDouble) -> AsyncIterator[ServiceBusClient]:
    async with ServiceBusClient.from_connection_string(double.connection_string) as sb:
        yield sb
