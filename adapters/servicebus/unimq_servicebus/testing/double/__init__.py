"""An in-repo Azure Service Bus test double for the real azure-servicebus SDK (see docs/servicebus-double.md)."""

from .entities import EntityConfig, ServiceBusError
from .server import ServiceBusDouble

__all__ = ["EntityConfig", "ServiceBusDouble", "ServiceBusError"]
