"""unimq adapter for NATS: JetStream (default) and core NATS, over nats-py."""

from unimq_nats.driver import NatsDriver
from unimq_nats.options import NatsOptions

__all__ = ["NatsDriver", "NatsOptions"]
