"""RabbitMQ adapter for unimq: ``amqp://``, ``amqps://`` and ``rabbitmq://`` URLs, on aio-pika.

The whole mapping (exchanges, queues, emulations) is described in ``docs/backends/rabbitmq.md``.
"""

from unimq_rabbitmq.driver import RabbitMQDriver
from unimq_rabbitmq.options import RabbitMQOptions

__all__ = ["RabbitMQDriver", "RabbitMQOptions"]
