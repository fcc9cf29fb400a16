"""Redis's conformance targets (entry point ``unimq.targets``): a standalone Redis, and Redis Cluster."""

from __future__ import annotations

from unimq.testing.brokers import Image, Target


def targets() -> list[Target]:
    return [
        Target("redis", "redis://127.0.0.1:6379/0", "redis", container=Image("redis:7.0", 6379),
               matrix=(("redis", "orders"),)),
        Target("redis-cluster", "redis+cluster://127.0.0.1:17000,127.0.0.1:17001,127.0.0.1:17002", "redis-cluster",
               matrix=(("redis cluster", "orders"),)),
    ]
