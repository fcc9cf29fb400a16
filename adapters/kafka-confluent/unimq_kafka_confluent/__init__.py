"""unimq driver for Apache Kafka through librdkafka (``kafka://...?client=confluent``). See
docs/backends/kafka-confluent.md."""

from unimq_kafka_confluent.driver import ConfluentKafkaDriver
from unimq_kafka_confluent.options import ConfluentKafkaOptions

__all__ = ["ConfluentKafkaDriver", "ConfluentKafkaOptions"]
