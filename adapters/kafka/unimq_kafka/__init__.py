"""unimq adapter for Apache Kafka (``kafka://``), built on aiokafka. See docs/backends/kafka.md."""

from unimq_kafka.driver import KafkaDriver
from unimq_kafka.options import KafkaOptions

__all__ = ["KafkaDriver", "KafkaOptions"]
