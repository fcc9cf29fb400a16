"""RabbitMQ's conformance targets (entry point ``unimq.targets``): classic and quorum queues, and a
three-node cluster with quorum queues."""

from __future__ import annotations

from unimq.testing.brokers import Image, Target

_URL = "amqp://guest:guest@127.0.0.1:5672/"
_IMAGE = Image("rabbitmq:3.10", 5672)


def targets() -> list[Target]:
    return [
        Target("rabbitmq", _URL, "rabbitmq", container=_IMAGE, matrix=(("rabbitmq", "orders"),)),
        Target("rabbitmq-quorum", _URL + "?queue_type=quorum", "rabbitmq", container=_IMAGE),
        Target("rabbitmq-cluster", "amqp://guest:guest@127.0.0.1:5682,127.0.0.1:5683,127.0.0.1:5684/?queue_type=quorum",
               "rabbitmq-cluster"),
    ]
