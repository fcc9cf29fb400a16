"""unimq adapter for Azure Service Bus (``servicebus://``), on azure-servicebus. See docs/backends/servicebus.md."""

from unimq_servicebus.driver import ServiceBusDriver
from unimq_servicebus.options import ServiceBusOptions

__all__ = ["ServiceBusDriver", "ServiceBusOptions"]
