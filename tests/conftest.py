"""Shared by every test folder: find a running broker for a target, the way the conformance plugin
does; in CI (CI=true) an unreachable broker fails the test instead of skipping it."""

import os
from collections.abc import Callable

import pytest

from unimq.errors import ConfigError
from unimq.testing.brokers import Provisioner, Resolution, select_targets

_provisioner = Provisioner()


def resolve(target: str) -> Resolution:
    """Where ``target`` runs; fails (CI) or skips (locally) with the command that starts it."""
    try:
        (chosen,) = select_targets([target])
    except ConfigError as exc:
        problem = str(exc)
    else:
        resolution = _provisioner.resolve(chosen)
        if resolution.url is not None:
            return resolution
        problem = resolution.problem
    if os.environ.get("CI") == "true":
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``needs_broker("kafka")`` fails in CI, or skips locally, when it is unreachable."""
    for marker in item.iter_markers("needs_broker"):
        resolve(marker.args[0])


@pytest.fixture(scope="session")
def broker_url() -> Callable[[str], str]:
    """``broker_url(target)``: the URL of a running broker for that conformance target."""
    return lambda target: str(resolve(target).url)
