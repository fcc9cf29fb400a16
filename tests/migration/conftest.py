"""Brokers for migration tests, found the way the conformance plugin finds them."""

import os

import pytest

from unimq.errors import ConfigError
from unimq.testing.brokers import Provisioner, select_targets

_provisioner = Provisioner()


def broker_url(target: str) -> str:
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
