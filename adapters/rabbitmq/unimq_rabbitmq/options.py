"""URL query parameters of ``amqp://`` / ``amqps://`` / ``rabbitmq://`` URLs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: x-expires is a 32-bit millisecond timer.
MAX_IDLE = (2**32 - 1) / 1000

#: RabbitMQ 4.x's default ``max_message_size`` (3.x allowed 128 MiB): a larger body would make the
#: broker close the channel, so unimq refuses it up front with MessageTooLarge.
BROKER_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class RabbitMQOptions(BaseModel):
    """Every option of the RabbitMQ adapter; unknown ones are a ConfigError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_type: Literal["classic", "quorum"] = Field(
        "classic", description="type of the queues unimq declares (groups, default group, dead-letter queue)"
    )
    prefetch: int | None = Field(
        None, ge=1, le=65535,
        description="upper bound on basic.qos per consumer; the consumer's prefetch= wins if lower",
    )
    confirm: bool = Field(
        True, description="publisher confirms: send() returns once the broker has the message. false = fire and forget"
    )
    persistent: bool = Field(True, description="delivery_mode 2: messages survive a broker restart")
    max_priority: int | None = Field(
        None, ge=0, le=255,
        description="x-max-priority of every classic queue unimq declares (default: none, set per destination "
                    "with ensure(max_priority=n)). Priority queues are slower. Not on quorum.",
    )
    temporary_idle: float = Field(
        60.0, gt=0, le=MAX_IDLE,
        description="seconds a temporary destination (ensure(temporary=True), broker.temporary(), request()'s "
                    "reply queue) may stay unused before RabbitMQ deletes it (x-expires)")
    heartbeat: int = Field(60, ge=0, description="AMQP heartbeat, seconds (0 = off)")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to establish the connection")
    publish_timeout: float = Field(30.0, gt=0, description="seconds to wait for a publisher confirm")
    reconnect_interval: float = Field(1.0, gt=0, description="seconds between reconnection attempts")
    connection_name: str | None = Field(None, description="shown in the management UI")
    max_message_bytes: int = Field(
        BROKER_MAX_MESSAGE_BYTES, ge=1, description="largest body send() accepts; raise with max_message_size"
    )
    ca_file: str | None = Field(None, description="amqps: CA bundle to verify the server")
    cert_file: str | None = Field(None, description="amqps: client certificate (mutual TLS)")
    key_file: str | None = Field(None, description="amqps: client private key")
    verify: bool = Field(True, description="amqps: verify the server certificate and host name")

    @model_validator(mode="after")
    def _check(self) -> RabbitMQOptions:
        if self.queue_type == "quorum" and self.max_priority:
            raise ValueError("max_priority: quorum queues do not support x-max-priority; use queue_type=classic")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")
        return self

    @property
    def priority_levels(self) -> int:
        """x-max-priority given to the classic queues unimq declares (0 = none)."""
        return 0 if self.queue_type == "quorum" else self.max_priority or 0

    @property
    def tls_options_given(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file or not self.verify)
