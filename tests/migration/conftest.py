"""Brokers for migration tests, found the way the conformance plugin finds them."""

import os
from collections.abc import Callable

import pytest

from unimq.errors import ConfigError
from unimq.testing.brokers import Provisioner, select_targets

_provisioner = Provisioner()


@pytest.fixture(scope="session")
def broker_url() -> Callable[[str], str]:
    """``broker_url(target)``: the URL of a running broker for that conformance target."""
    return _resolve


def _resolve(target: str) -> str:
    """The URL of a running broker for ``target``; in CI an unreachable one fails the test."""
    try:
        (chosen,) = select_targets([target])
    except ConfigError as exc:
        problem = str(exc)
    else:
        resolution = _provisioner.resolve(chosen)
        if resolution.url is not None:
            return resolution.url
        problem = resolution.problem
    if os.environ.get("CI") == "true":
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)
