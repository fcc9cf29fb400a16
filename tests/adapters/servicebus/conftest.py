"""Fixtures for the Service Bus adapter tests: the in-repo double (``scripts/brokers up servicebus``)
or ``UNIMQ_TEST_SERVICEBUS_URL``; the plain SDK client talks to the same namespace for interop."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from azure.servicebus.aio import ServiceBusClient
from unimq_servicebus.options import ServiceBusOptions, endpoint

import unimq
from unimq.url import parse_options, parse_url

SB_URL = os.environ.get(
    "UNIMQ_TEST_SERVICEBUS_URL", "servicebus://RootManageSharedAccessKey:SAS_KEY_VALUE@127.0.0.1:5673?emulator=true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/adapters/servicebus" in str(item.path):
            item.add_marker(pytest.mark.needs_broker("servicebus"))


@pytest.fixture
def sb_url() -> str:
    return SB_URL


@pytest.fixture
def name() -> Iterator[str]:
    yield f"t-sb-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def broker(name: str) -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(SB_URL) as b:
        yield b
        await b.delete(name)


@pytest.fixture
async def sdk() -> AsyncIterator[ServiceBusClient]:
    """A plain azure-servicebus client on the same namespace."""
    parsed = parse_url(SB_URL)
    ep = endpoint(parsed, parse_options(ServiceBusOptions, "servicebus", dict(parsed.query)))
    if ep.connection_string:
        client = ServiceBusClient.from_connection_string(ep.connection_string)
    else:
        client = ServiceBusClient(ep.namespace, ep.credential)
    async with client:
        yield client
