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
    """A single broker, and a three-broker KRaft cluster (replication 3, min.insync.replicas 2).
    Group joins take seconds, so waits are longer than elsewhere."""
    timing = Timing(receive=30.0, quiet=2.0, test=90.0)
    return [
        Target("kafka", "kafka://127.0.0.1:9092", "kafka", timing,
               container=Image("apache/kafka:3.9.2", 9092, env=_ENV), matrix=(("kafka", "orders"),)),
        Target("kafka-cluster", "kafka://127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094", "kafka-cluster", timing),
    ]
