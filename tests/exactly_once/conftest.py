"""Fixtures for the exactly-once tests: PostgreSQL (started by ``scripts/brokers up postgres``)
fails the test in CI (CI=true) and skips it locally when unreachable, like ``needs_broker``."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("UNIMQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5433/postgres")


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The SQLAlchemy async URL of the test PostgreSQL (``postgresql+asyncpg://...``)."""
    if not _reachable(POSTGRES_URL):
        message = f"PostgreSQL is not reachable at {POSTGRES_URL}: run `scripts/brokers up postgres`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def pg_engine(postgres_url: str) -> AsyncIterator[Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(postgres_url, pool_size=10)
    yield engine
    await engine.dispose()


def scripts_brokers() -> ModuleType:
    """scripts/brokers.py, a script rather than a package, loaded by path (private brokers)."""
    name = "unimq_scripts_brokers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "brokers.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_home(name: str) -> Path:
    """A directory for a private broker under .brokers/ (PostgreSQL runs as the ``postgres`` user,
    which cannot enter pytest's tmp_path, private to root)."""
    home = ROOT / ".brokers" / "private" / f"{name}-{uuid.uuid4().hex[:8]}"
    home.mkdir(parents=True)
    return home
