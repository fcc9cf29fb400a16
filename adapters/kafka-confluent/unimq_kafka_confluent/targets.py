"""The confluent driver's conformance target (entry point ``unimq.targets``): the same broker as
``kafka``, reached through librdkafka."""

from __future__ import annotations

from unimq.testing.brokers import Target, Timing


def targets() -> list[Target]:
    """Group joins take seconds, so waits are as long as the aiokafka target's."""
    return [Target("kafka-confluent", "kafka://127.0.0.1:9092?client=confluent", "kafka",
                   Timing(receive=30.0, quiet=2.0, test=90.0), matrix=(("kafka (confluent)", "orders"),))]
