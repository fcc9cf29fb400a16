"""The three-node clusters started by ``scripts/brokers up kafka-cluster nats-cluster rabbitmq-cluster
redis-cluster``. Tests here kill and restart their nodes, so they need the clusters scripts/brokers
started (it knows their pids); in CI (CI=true) an unreachable cluster fails the test, locally it skips.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from unimq.testing.brokers import reachable

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the three-node clusters of scripts/brokers (kills nodes)")


def scripts_brokers() -> ModuleType:
    """scripts/brokers.py, a script rather than a package, loaded by path."""
    name = "unimq_scripts_brokers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "brokers.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _unavailable(problem: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Any:
    """The scripts/brokers Cluster named by the test's ``backend`` parameter (e.g. ``kafka-cluster``),
    up and formed; every node it killed is running again afterwards."""
    name = request.getfixturevalue("backend")
    instance = scripts_brokers().BROKERS[name]()
    if not reachable(instance.url) or not instance.is_up():
        _unavailable(f"{name} is not running: start it with `scripts/brokers up {name}`")
    yield instance
    assert scripts_brokers().up([instance]), f"{name}: could not bring every node back"
