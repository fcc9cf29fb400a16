"""Brokers for tests: the conformance targets and how to reach each one.

A target is a named URL (``rabbitmq-quorum`` is RabbitMQ with quorum queues). It runs when the
adapter for its URL scheme is installed. Each one resolves, in order, to:

1. the URL in ``UNIMQ_TEST_<TARGET>_URL`` (``-`` becomes ``_``), if set;
2. the broker started by ``scripts/brokers up <backend>`` on its default port (a TCP probe);
3. a testcontainers container bound to that same default port, when a container engine answers;
4. otherwise nothing: the plugin fails the target's tests when ``CI=true`` and skips them locally,
   with the command that starts the broker.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from unimq import registry
from unimq.errors import ConfigError
from unimq.url import parse_url


@dataclass(frozen=True)
class Timing:
    """Seconds the suite waits for things, per target. Scale them all with ``--unimq-timeout-scale``."""

    lock: float = 2.0  #: lock / visibility timeout used by the lock tests
    delay: float = 2.0  #: delay used by the delay and nack-delay tests
    ttl: float = 1.0  #: time-to-live used by the TTL test
    receive: float = 10.0  #: longest wait for a message that should arrive
    quiet: float = 1.0  #: how long "nothing arrives" is watched
    early: float = 0.2  #: how early a delayed message may arrive (clock and polling slack)
    test: float = 60.0  #: hard bound on one test; a hung test fails instead of hanging

    def scaled(self, factor: float) -> Timing:
        return Timing(**{f.name: getattr(self, f.name) * factor for f in fields(self)})


@dataclass(frozen=True)
class Image:
    """A container a target can be started from when a container engine answers (testcontainers).
    It binds the broker's default port, so the target's URL is unchanged."""

    image: str
    port: int
    command: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    def start(self) -> Any:
        """Start it; return what has a ``stop()``."""
        from testcontainers.core.container import DockerContainer

        container = DockerContainer(self.image).with_bind_ports(self.port, self.port)
        for key, value in self.env:
            container = container.with_env(key, value)
        if self.command:
            container = container.with_command(self.command)
        container.start()
        return container


@dataclass(frozen=True)
class Target:
    """A named URL the suite runs against. ``backend`` is the name ``scripts/brokers`` knows.

    Adapters register theirs through the ``unimq.targets`` entry point (a function returning a list
    of targets), so a third-party adapter joins ``--unimq-target`` and the capability matrix
    without an edit here."""

    name: str
    url: str
    backend: str
    timing: Timing = field(default_factory=Timing)
    #: A fixed pool of destination names, for a namespace that cannot create entities at run time
    #: (the suite's ``names`` fixture hands these out instead of making new names).
    pool: tuple[str, ...] = ()
    #: How to start the broker in a container (anything with ``start() -> object with stop()``).
    container: Any = None
    #: Columns of the capability matrix this target shows: (label, destination).
    matrix: tuple[tuple[str, str], ...] = ()

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def env_var(self) -> str:
        return f"UNIMQ_TEST_{self.name.upper().replace('-', '_')}_URL"


TARGET_GROUP = "unimq.targets"
MEMORY = Target("memory", "memory://conformance", "memory", Timing(receive=5.0, quiet=0.3, test=30.0),
                matrix=(("memory", "orders"),))


def _load_targets() -> tuple[Target, ...]:
    found = [MEMORY]
    for entry in sorted(entry_points(group=TARGET_GROUP), key=lambda e: e.name):
        found += entry.load()()
    return tuple(found)


#: Every registered target: memory:// and those of the installed adapters.
TARGETS: tuple[Target, ...] = _load_targets()


def timing_for(url: str) -> Timing:
    """The timing of the first registered target with ``url``'s scheme (default timing otherwise)."""
    scheme = urlsplit(url).scheme
    return next((t.timing for t in TARGETS if t.scheme == scheme), Timing())


def select_targets(names: Iterable[str] = ()) -> list[Target]:
    """The targets whose adapter is installed, restricted to ``names`` if given.

    A name that is unknown, or whose adapter is not installed, is a ConfigError: asking for a
    target and silently getting none would hide it.
    """
    wanted = list(dict.fromkeys(names))
    known = {t.name: t for t in TARGETS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(f"unknown conformance target(s) {unknown}; known: {', '.join(known)}")
    schemes = registry.installed()
    if not wanted:
        return [t for t in TARGETS if t.scheme in schemes]
    missing = [n for n in wanted if known[n].scheme not in schemes]
    if missing:
        raise ConfigError(f"target(s) {missing} need their adapter: "
                          + ", ".join(f'pip install "unimq[{known[n].backend}]"' for n in missing))
    return [known[n] for n in wanted]


def url_targets(urls: Iterable[str]) -> list[Target]:
    """Targets for explicit ``--unimq-url`` values, named by scheme (``kafka``, ``kafka-2``, …)."""
    out: list[Target] = []
    seen: dict[str, int] = {}
    for url in urls:
        scheme = urlsplit(url).scheme or "url"
        seen[scheme] = seen.get(scheme, 0) + 1
        name = scheme if seen[scheme] == 1 else f"{scheme}-{seen[scheme]}"
        out.append(Target(name, url, scheme, timing_for(url)))
    return out


@dataclass(frozen=True)
class Resolution:
    """Where a target was found (``url``, and ``how``), or why it was not (``problem``)."""

    url: str | None
    how: str
    problem: str = ""


def address(url: str) -> tuple[str, int] | None:
    """The host and port a URL connects to (SQS: its ``endpoint_url``); None if it has none."""
    parsed = parse_url(url)
    endpoint = parsed.query.get("endpoint_url")
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.hostname and parts.port:
            return parts.hostname, parts.port
    if parsed.host and parsed.port:
        return parsed.host, parsed.port
    return None


def reachable(url: str, timeout: float = 1.0) -> bool:
    """True if the URL's host:port accepts a TCP connection (always true for addressless URLs)."""
    where = address(url)
    if where is None:
        return True
    try:
        with socket.create_connection(where, timeout=timeout):
            return True
    except OSError:
        return False


def container_engine() -> bool:
    """True when ``docker info`` succeeds."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=15, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Provisioner:
    """Resolves each target once per test session and stops the containers it started."""

    def __init__(self, ready_timeout: float = 180.0) -> None:
        self._cache: dict[str, Resolution] = {}
        self._started: dict[str, Any] = {}  # backend → its container (or compose project)
        self._engine: bool | None = None
        self._ready_timeout = ready_timeout

    def resolve(self, target: Target) -> Resolution:
        if target.name not in self._cache:
            self._cache[target.name] = self._resolve(target)
        return self._cache[target.name]

    def _resolve(self, target: Target) -> Resolution:
        override = os.environ.get(target.env_var)
        url = override or target.url
        if target.scheme == "memory":
            return Resolution(url, "in-process")
        if reachable(url):
            return Resolution(url, target.env_var if override else "scripts/brokers")
        problem = (f"backend {target.name} unreachable at {parse_url(url).redacted()}: "
                   f"start it with `scripts/brokers up {target.backend}`")
        if override is None:
            if self._engine is None:
                self._engine = container_engine()
            if self._engine and target.container is not None:
                try:
                    self._start_container(target)
                except Exception as exc:
                    return Resolution(None, "testcontainers", f"{problem} (container failed: {exc})")
                if self._wait_reachable(url):
                    return Resolution(url, "testcontainers")
        return Resolution(None, "unreachable", problem)

    def _start_container(self, target: Target) -> None:
        if target.container is None:
            raise ConfigError(f"{target.name} declares no container: start it natively")
        if target.backend in self._started:
            return
        self._started[target.backend] = target.container.start()

    def _wait_reachable(self, url: str) -> bool:
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            if reachable(url):
                time.sleep(2.0)  # the port opens a moment before the broker accepts clients
                return True
            time.sleep(1.0)
        return False

    def close(self) -> None:
        for started in self._started.values():
            with contextlib.suppress(Exception):
                started.stop()
        self._started.clear()


def with_timing(target: Target, scale: float) -> Target:
    return replace(target, timing=target.timing.scaled(scale))


_SHARED = Provisioner()
atexit.register(_SHARED.close)  # the plugin closes its own; this one serves require() for other tests


def require(target: str) -> Resolution:
    """Where ``target``'s broker runs, for tests outside the conformance suite.

    Unreachable (or its adapter missing): the calling test fails when ``CI=true`` — a backend that
    cannot be reached is a failure in CI, never a silent skip — and is skipped locally, with the
    command that starts it.
    """
    import pytest

    try:
        (chosen,) = select_targets([target])
    except ConfigError as exc:
        problem = str(exc)
    else:
        resolution = _SHARED.resolve(chosen)
        if resolution.url is not None:
            return resolution
        problem = resolution.problem
    if os.environ.get("CI") == "true":
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)
