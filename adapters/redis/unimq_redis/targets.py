"""Redis's conformance target (entry point ``unimq.targets``)."""

from __future__ import annotations

from unimq.testing.brokers import Image, Target


def targets() -> list[Target]:
    return [Target("redis", "redis://127.0.0.1:6379/0", "redis", container=Image("redis:7.0", 6379),
                   matrix=(("redis", "orders"),))]
