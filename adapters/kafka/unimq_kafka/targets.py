"""Kafka's conformance targets (entry point ``unimq.targets``): where the suite finds a broker."""

from __future__ import annotations

from unimq.testing.brokers import Image, Target, Timing

_ENV = (
    ("KAFKA_NODE_ID", "1"),
    ("KAFKA_PROCESS_ROLES", "broker,controller"),
    ("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://localhost:9093"),
    ("KAFKA_ADVERTISED_LISTENERS", "PLAINTEXT://127.0.0.1:9092"),
    ("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER"),
    ("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093"),
    ("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"),
    ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
    ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1"),
    ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
    ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
)


def targets() -> list[Target]:
    """Group joins take seconds, so waits are longer than elsewhere."""
    return [Target("kafka", "kafka://127.0.0.1:9092", "kafka", Timing(receive=30.0, quiet=2.0, test=90.0),
                   container=Image("apache/kafka:3.9.2", 9092, env=_ENV), matrix=(("kafka", "orders"),))]
