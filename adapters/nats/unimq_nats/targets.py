"""NATS's conformance targets (entry point ``unimq.targets``): JetStream (also with native routing),
core NATS, and a three-node JetStream cluster with R3 streams."""

from __future__ import annotations

from unimq.testing.brokers import Image, Target

_IMAGE = Image("nats:2.15", 4222, command="-js")


def targets() -> list[Target]:
    return [
        Target("nats", "nats://127.0.0.1:4222", "nats", container=_IMAGE, matrix=(("nats", "orders"),)),
        Target("nats-core", "nats://127.0.0.1:4222?jetstream=false", "nats", container=_IMAGE,
               matrix=(("nats core", "orders"),)),
        Target("nats-routing", "nats://127.0.0.1:4222?routing=subjects", "nats", container=_IMAGE),
        Target("nats-cluster", "nats://127.0.0.1:14222,127.0.0.1:14223,127.0.0.1:14224?replicas=3", "nats-cluster"),
    ]
