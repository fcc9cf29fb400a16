"""The unimq pytest plugin: runs the conformance suite against brokers (entry point ``pytest11: unimq``).

Options: ``--unimq-url=URL`` (repeatable; test any broker, e.g. a third-party adapter's),
``--unimq-target=NAME`` (repeatable; restrict the built-in targets) and
``--unimq-timeout-scale=F``. Without ``--unimq-url`` every target of
:mod:`unimq.testing.brokers` whose adapter is installed runs.

Fixtures: ``unimq_url`` (parametrised over the targets, ids = target names), ``unimq_target``,
``timing``, ``broker`` (connected, closed after), ``names`` (unique destination and group names,
deleted after) and ``caps``. The marker ``@pytest.mark.requires("fanout", ...)`` skips a test when
the backend declares one of those capabilities ``none``. A summary per target ends the run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import os
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pytest
import pytest_asyncio

import unimq
from unimq.errors import ConfigError
from unimq.testing.brokers import Provisioner, Resolution, Target, Timing, select_targets, url_targets, with_timing

pytest.register_assert_rewrite("unimq.testing.conformance.support")

#: Names of this run: ``ut-<RUN_ID>-<n>``; short, and only [a-z0-9-] so that every backend accepts them.
RUN_ID = secrets.token_hex(3)
_COUNTER = itertools.count(1)
_POOLED = itertools.count()  # the next name of a target's fixed pool (Target.pool), in turn
_CAPABILITY_SKIP = re.compile(r"capability '(\w+)' is (\w+)")


@dataclass
class _Outcome:
    outcome: str = "passed"
    reason: str = ""


@dataclass
class _State:
    """What the plugin keeps for one pytest run."""

    config: pytest.Config
    provisioner: Provisioner = field(default_factory=Provisioner)
    resolved: dict[str, Resolution] = field(default_factory=dict)
    target_of: dict[str, str] = field(default_factory=dict)  # nodeid → target name
    outcomes: dict[str, _Outcome] = field(default_factory=dict)

    @cached_property
    def explicit(self) -> bool:
        return bool(self.config.getoption("unimq_url"))

    @cached_property
    def targets(self) -> list[Target]:
        scale = self.config.getoption("unimq_timeout_scale")
        try:
            if self.explicit:
                chosen = url_targets(self.config.getoption("unimq_url"))
            else:
                chosen = select_targets(self.config.getoption("unimq_target"))
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
        return [with_timing(t, scale) for t in chosen]


_STATE = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    return config.stash[_STATE]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unimq", "unimq conformance suite")
    group.addoption("--unimq-url", action="append", default=[], metavar="URL",
                    help="run the conformance suite against this broker URL (repeatable)")
    group.addoption("--unimq-target", action="append", default=[], metavar="NAME",
                    help="restrict the run to these built-in targets, e.g. kafka, sqs-fifo (repeatable)")
    group.addoption("--unimq-timeout-scale", type=float, default=1.0, metavar="F",
                    help="multiply every wait and time bound of the suite by F (slow machines: 2)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*flags): skip unless the backend supports these capabilities")
    config.stash[_STATE] = _State(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.provisioner.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "unimq_url" in metafunc.fixturenames:
        targets = _state(metafunc.config).targets
        metafunc.parametrize("unimq_url", targets, ids=[t.name for t in targets], indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state(config)
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or not isinstance(callspec.params.get("unimq_url"), Target):
            continue
        state.target_of[item.nodeid] = callspec.params["unimq_url"].name
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.obj = _bounded(item.obj, item)


def _bounded(test: Callable[..., Awaitable[Any]], item: pytest.Function) -> Callable[..., Awaitable[Any]]:
    """Wrap an async test in its target's ``timing.test`` bound: a hung test fails, it does not hang."""

    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        timing = item.funcargs.get("timing")
        limit = timing.test if isinstance(timing, Timing) else Timing().test
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                return await test(*args, **kwargs)
        except TimeoutError:
            if scope.expired():
                pytest.fail(f"did not finish within {limit:g}s (timing.test): hung?", pytrace=False)
            raise

    return bounded


# Fixtures


@pytest.fixture(scope="session")
def unimq_url(request: pytest.FixtureRequest) -> str:
    """The URL of the target under test; unreachable targets fail when CI=true and skip otherwise."""
    target: Target = request.param
    state = _state(request.config)
    if state.explicit:
        return target.url
    resolution = state.resolved.setdefault(target.name, state.provisioner.resolve(target))
    if resolution.url is None:
        if os.environ.get("CI") == "true":
            pytest.fail(resolution.problem, pytrace=False)
        pytest.skip(resolution.problem)
    return resolution.url


@pytest.fixture
def unimq_target(request: pytest.FixtureRequest, unimq_url: str) -> Target:
    target: Target = request.node.callspec.params["unimq_url"]
    return target


@pytest.fixture
def timing(unimq_target: Target) -> Timing:
    return unimq_target.timing


@pytest_asyncio.fixture(loop_scope="function")
async def broker(unimq_url: str, timing: Timing) -> AsyncIterator[unimq.Broker]:
    async with asyncio.timeout(timing.receive):
        connected = await unimq.connect(unimq_url)
    try:
        yield connected
    finally:
        async with asyncio.timeout(timing.receive):
            await connected.close()


class Names:
    """Unique names for one test: ``names()`` a new destination, ``names.dest`` the test's main one,
    ``names.group()`` a group. Destinations are deleted when the test ends (best effort).

    A target with a fixed ``pool`` (a namespace that cannot create entities) gets the pool's names
    in turn instead, each emptied when the test ends rather than deleted."""

    def __init__(self, pool: tuple[str, ...] = ()) -> None:
        self.created: list[str] = []
        self.pool = pool

    def __call__(self) -> str:
        name = self.pool[next(_POOLED) % len(self.pool)] if self.pool else f"ut-{RUN_ID}-{next(_COUNTER)}"
        self.created.append(name)
        return name

    @cached_property
    def dest(self) -> str:
        return self()

    def group(self) -> str:
        return f"g-{RUN_ID}-{next(_COUNTER)}"


@pytest_asyncio.fixture(loop_scope="function")
async def names(broker: unimq.Broker, timing: Timing, unimq_target: Target) -> AsyncIterator[Names]:
    made = Names(unimq_target.pool)
    if made.pool:  # what an earlier run or test left locked has come back by now
        async with asyncio.timeout(timing.receive):
            await _empty(broker, made.dest)
    yield made
    if broker.closed:
        return
    for name in made.created:
        try:
            async with asyncio.timeout(timing.receive):
                await (_empty(broker, name) if made.pool else broker.delete(name))
        except Exception:  # cleanup is best effort: names are unique per run anyway
            continue


async def _empty(broker: unimq.Broker, name: str) -> None:
    """Take every message out of a pooled destination and its dead-letter destination."""
    for dest in (name, broker.dead_letter_destination(name)):
        async with broker.consumer(dest) as consumer:
            while batch := await consumer.receive_batch(100, timeout=0.2):
                await consumer.ack_many(batch)


@pytest.fixture
def caps(broker: unimq.Broker, names: Names) -> unimq.Capabilities:
    """The capabilities of the test's main destination (they can differ per destination, e.g. SQS FIFO)."""
    return broker.capabilities_for(names.dest)


@pytest.fixture(autouse=True)
def _unimq_requires(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("requires")
    if marker is None or "unimq_url" not in request.fixturenames:
        return
    capabilities: unimq.Capabilities = request.getfixturevalue("caps")
    target: Target = request.getfixturevalue("unimq_target")
    for flag in marker.args:
        if not capabilities.supports(flag):
            pytest.skip(f"{target.name}: capability '{flag}' is none")


# The summary


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    state = _state(item.config)
    if item.nodeid in state.target_of:
        if report.when == "setup":  # each attempt (reruns too) starts afresh; the last one counts
            state.outcomes[item.nodeid] = _Outcome()
        outcome = state.outcomes.setdefault(item.nodeid, _Outcome())
        if report.failed:
            outcome.outcome = "failed"
        elif report.skipped and outcome.outcome != "failed":
            outcome.outcome = "skipped"
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            outcome.reason = reason.removeprefix("Skipped: ")
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = _state(config)
    if not state.outcomes:
        return
    write = terminalreporter.write_line
    terminalreporter.section("unimq conformance")
    per_target: dict[str, list[_Outcome]] = {}
    for nodeid, outcome in state.outcomes.items():
        per_target.setdefault(state.target_of[nodeid], []).append(outcome)
    width = max(len(name) for name in per_target)
    write(f"{'target':<{width}}  passed  failed  skipped  reached via")
    for target in state.targets:
        outcomes = per_target.get(target.name)
        if outcomes is None:
            continue
        counts = Counter(o.outcome for o in outcomes)
        resolution = state.resolved.get(target.name)
        via = "--unimq-url" if state.explicit else (resolution.how if resolution else "")
        write(f"{target.name:<{width}}  {counts['passed']:>6}  {counts['failed']:>6}  {counts['skipped']:>7}  {via}")
        for line in _skip_groups([o.reason for o in outcomes if o.outcome == "skipped"]):
            write(f"{'':<{width}}    {line}")


def _skip_groups(reasons: list[str]) -> list[str]:
    """Skips grouped by capability flag: gated (flag none), refusal tests n/a (flag supported), other."""
    gated: Counter[str] = Counter()
    supported: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for reason in reasons:
        match = _CAPABILITY_SKIP.search(reason)
        if match is None:
            other[reason.split(": ", 1)[-1][:100]] += 1
        elif match.group(2) == "none":
            gated[match.group(1)] += 1
        else:
            supported[match.group(1)] += 1
    lines = []
    if gated:
        lines.append("capability none: " + ", ".join(f"{k} ×{n}" for k, n in sorted(gated.items())))
    if supported:
        lines.append("refusal n/a (supported): " + ", ".join(sorted(supported)))
    lines += [f"other: {k} ×{n}" for k, n in sorted(other.items())]
    return lines
