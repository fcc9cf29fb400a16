"""unimq: one async Producer/Consumer interface over many message brokers, chosen by URL.

    async with unimq.connect("kafka://localhost:9092") as broker:
        await broker.producer("orders").send(b"...", key="customer-42")
"""

import logging

from unimq.broker import Broker, Consumer, Producer, connect
from unimq.capabilities import Capabilities, Feature, Support
from unimq.codecs import Codec, Compressed, JsonCodec, ModelCodec, RawCodec
from unimq.driver import DestinationSpec, Stats
from unimq.errors import (
    CapabilityError,
    Closed,
    ConfigError,
    ConnectionError,
    MessageTooLarge,
    NotFound,
    PublishError,
    Timeout,
    UnimqError,
)
from unimq.message import Delivery, Message
from unimq.reliability import Retry

__version__ = "0.1.0"

# A library logs under "unimq.*" and leaves handlers to the application.
logging.getLogger("unimq").addHandler(logging.NullHandler())

__all__ = [
    "Broker",
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
    "JsonCodec",
    "Message",
    "MessageTooLarge",
    "ModelCodec",
    "NotFound",
    "Producer",
    "PublishError",
    "RawCodec",
    "Retry",
    "Stats",
    "Support",
    "Timeout",
    "UnimqError",
    "connect",
]
