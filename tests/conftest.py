"""Shared by every test folder: brokers are found the way the conformance plugin finds them, and in
CI (CI=true) an unreachable broker fails the test instead of skipping it."""

from collections.abc import Callable

import pytest

from unimq.testing.brokers import require


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``needs_broker("kafka")`` fails in CI, or skips locally, when it is unreachable."""
    for marker in item.iter_markers("needs_broker"):
        require(marker.args[0])


@pytest.fixture(scope="session")
def broker_url() -> Callable[[str], str]:
    """``broker_url(target)``: the URL of a running broker for that conformance target."""
    return lambda target: str(require(target).url)
