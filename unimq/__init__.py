"""unimq: one async Producer/Consumer interface over many message brokers, chosen by URL.

    async with unimq.connect("kafka://localhost:9092") as broker:
        await broker.producer("orders").send(b"...", key="customer-42")
"""

import logging

from unimq.app import App, Router
from unimq.broker import Broker, Consumer, Producer, connect
from unimq.capabilities import Capabilities, Feature, Support
from unimq.codecs import Codec, Compressed, JsonCodec, ModelCodec, RawCodec
from unimq.driver import DestinationSpec, Stats
from unimq.errors import (
    AuthenticationError,
    BrokerConnectionError,
    CapabilityError,
    Closed,
    ConfigError,
    ConnectionError,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    PublishError,
    Throttled,
    Timeout,
    UnimqError,
)
from unimq.message import Delivery, Message
from unimq.recoverability import HandlerTimeout, KillSwitch, Reject
from unimq.reliability import Retry

__version__ = "0.1.0"

# A library logs under "unimq.*" and leaves handlers to the application.
logging.getLogger("unimq").addHandler(logging.NullHandler())

__all__ = [
    "App",
    "AuthenticationError",
    "Broker",
    "BrokerConnectionError",
    "Capabilities",
    "CapabilityError",
    "Closed",
    "Codec",
    "Compressed",
    "ConfigError",
    "ConnectionError",
    "Consumer",
    "Delivery",
    "DestinationSpec",
    "Feature",
    "HandlerTimeout",
    "JsonCodec",
    "KillSwitch",
    "Message",
    "MessageTooLarge",
    "ModelCodec",
    "NotFound",
    "PermissionDenied",
    "Producer",
    "PublishError",
    "RawCodec",
    "Reject",
    "Retry",
    "Router",
    "Stats",
    "Support",
    "Throttled",
    "Timeout",
    "UnimqError",
    "connect",
]
