"""Object stores for the payload tests: S3Proxy (`scripts/brokers up s3`) and Azurite
(`scripts/brokers up azurite`). An unreachable store fails in CI and skips locally."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid

import pytest
from azure.core.exceptions import ResourceExistsError

from unimq.payloads import AzureBlobStore, S3Store, open_store

S3_URL = os.environ.get("UNIMQ_TEST_S3_URL",
                        "s3://unimq:unimq-s3-test-secret@unimq-test/?endpoint_url=http://127.0.0.1:9400&region=us-east-1")
AZURITE = os.environ.get(
    "UNIMQ_TEST_AZURITE_URL",
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6"
    "IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
)
PORTS = {"s3": 9400, "azurite": 10000}


def require_store(name: str) -> None:
    """Fail (CI) or skip (locally) when the store server ``name`` does not answer."""
    try:
        socket.create_connection(("127.0.0.1", PORTS[name]), timeout=0.5).close()
        return
    except OSError:
        problem = f"{name} is not running on 127.0.0.1:{PORTS[name]}: run scripts/brokers up {name}"
    if os.environ.get("CI") == "true":
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


async def s3_store() -> S3Store:
    require_store("s3")
    store = await open_store(S3_URL.replace("/?", f"/t{uuid.uuid4().hex[:8]}?", 1))
    assert isinstance(store, S3Store)
    return store


async def azure_store() -> AzureBlobStore:
    require_store("azurite")
    container = "unimq-test"
    store = AzureBlobStore(container, f"t{uuid.uuid4().hex[:8]}", connection_string=AZURITE)
    if not await store._client.exists():  # Azurite starts empty
        with contextlib.suppress(ResourceExistsError):
            await store._client.create_container()
    return await store.open()
