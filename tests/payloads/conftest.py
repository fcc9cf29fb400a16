"""Store fixtures for the payload tests: a temp directory, S3Proxy and Azurite (see payload_stores)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from payload_stores import azure_store, s3_store

from unimq.payloads import FileStore, Store


@pytest.fixture(params=["file", "s3", "azure"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store kind, opened and closed."""
    made: Store
    if request.param == "file":
        made = await FileStore(tmp_path).open()
    elif request.param == "s3":
        made = await s3_store()
    else:
        made = await azure_store()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[[str], object]:
    """``await make_store(kind)``: a fresh store of ``kind`` (closed by the caller)."""

    async def make(kind: str) -> Store:
        if kind == "file":
            return await FileStore(tmp_path).open()
        return await (s3_store() if kind == "s3" else azure_store())

    return make
