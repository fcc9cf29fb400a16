"""Fixtures for the SQS adapter tests: a real ElasticMQ (``scripts/brokers up sqs``) or ``UNIMQ_TEST_SQS_URL``."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest

import unimq
from unimq.url import parse_url

SQS_URL = os.environ.get("UNIMQ_TEST_SQS_URL", "sqs://?endpoint_url=http://127.0.0.1:9324&region=us-east-1")
FIFO_URL = os.environ.get("UNIMQ_TEST_SQS_FIFO_URL", SQS_URL + "&fifo=true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/adapters/sqs" in str(item.path):
            item.add_marker(pytest.mark.needs_broker("sqs"))


@pytest.fixture(scope="session")
def boto() -> Any:
    """A plain boto3 client on the same endpoint, for interop checks."""
    query = parse_url(SQS_URL).query
    return boto3.client(
        "sqs", endpoint_url=query.get("endpoint_url"), region_name=query.get("region", "us-east-1"),
        aws_access_key_id="x", aws_secret_access_key="x",
    )


@pytest.fixture
def name() -> Iterator[str]:
    yield f"t-sqs-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def broker(name: str) -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(SQS_URL) as b:
        yield b
        for dest in (name, name + ".fifo"):
            await b.delete(dest)


@pytest.fixture
async def fifo_broker(name: str) -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(FIFO_URL) as b:
        yield b
        await b.delete(name)


@pytest.fixture
def sqs_url() -> str:
    return SQS_URL
