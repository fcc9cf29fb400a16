"""Service Bus's conformance targets (entry point ``unimq.targets``): the in-repo double, with and
without sessions, and the static mode that behaves like the official emulator."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unimq.errors import ConfigError
from unimq.testing.brokers import Target, Timing

_URL = "servicebus://RootManageSharedAccessKey:SAS_KEY_VALUE@127.0.0.1:5673?emulator=true"
#: The official emulator's constraints (no control node, entities only from its Config.json): the
#: static-mode double of ``scripts/brokers up servicebus``, or the emulator from compose.yaml.
_STATIC = "servicebus://RootManageSharedAccessKey:SAS_KEY_VALUE@127.0.0.1:5674?emulator=true"
#: Locks are at least 5 s on Service Bus.
_TIMING = Timing(lock=5.0, receive=15.0, quiet=1.5, test=90.0)
_REPO = Path(__file__).resolve().parents[3]
CONFIG = _REPO / "scripts" / "servicebus-emulator-config.json"
COMPOSE_FILE = _REPO / "compose.yaml"
#: Queues of that config reserved for the conformance suite.
POOL_PREFIX = "unimq-c"


def pool(config: Path = CONFIG) -> tuple[str, ...]:
    """The conformance pool declared in the emulator config (empty outside a checkout of the repo)."""
    try:
        document = json.loads(config.read_text(encoding="utf-8"))
    except OSError:
        return ()
    queues = [q["Name"] for ns in document["UserConfig"]["Namespaces"] for q in ns.get("Queues") or []]
    return tuple(name for name in queues if name.startswith(POOL_PREFIX))


class _OfficialEmulator:
    """The official emulator needs a SQL sidecar and its config: it runs from the repo's compose.yaml
    (profile ``servicebus``, on 5674), only when the user has accepted its EULA."""

    def start(self) -> Any:
        if os.environ.get("ACCEPT_EULA") != "Y":
            raise ConfigError("the Service Bus emulator runs only with ACCEPT_EULA=Y (its licence)")
        from testcontainers.compose import DockerCompose

        compose = DockerCompose(COMPOSE_FILE.parent, compose_file_name=COMPOSE_FILE.name,
                                profiles=["servicebus"], services=["sqledge", "servicebus"], wait=False)
        compose.start()
        return compose


def targets() -> list[Target]:
    """The full double runs natively only (it has a control node and makes entities at run time)."""
    return [
        Target("servicebus", _URL, "servicebus", _TIMING, matrix=(("servicebus", "orders"),)),
        Target("servicebus-sessions", _URL + "&sessions=true", "servicebus", _TIMING,
               matrix=(("servicebus sessions", "orders"),)),
        Target("servicebus-static", _STATIC, "servicebus", _TIMING, pool(), container=_OfficialEmulator()),
    ]
