"""Query parameters of ``nats://`` and ``tls://`` URLs."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unimq.errors import ConfigError, register_secret


class NatsOptions(BaseModel):
    """``nats://user:pass@host:4222,host2:4222?jetstream=true&stream=...``; see docs/backends/nats.md."""

    model_config = ConfigDict(extra="forbid")

    jetstream: bool = Field(True, description="false = core NATS: at-most-once, no persistence")
    stream: str | None = Field(None, description="use this existing stream for every destination")
    token: str | None = Field(None, description="token authentication", repr=False)
    nkey_seed: str | None = Field(None, description="NKey seed (SU...) for nkey authentication", repr=False)
    creds: str | None = Field(None, description="path of a .creds file (JWT + NKey)")
    ca: str | None = Field(None, description="CA bundle path for TLS")
    cert: str | None = Field(None, description="client certificate path (mutual TLS)")
    key: str | None = Field(None, description="client key path (mutual TLS)")
    tls_hostname: str | None = None
    name: str | None = Field(None, description="client connection name shown by the server")
    connect_timeout: float = Field(2.0, gt=0)
    connect_attempts: int = Field(2, ge=1, description="tries per server before connect() fails")
    max_reconnect_attempts: int = Field(-1, description="after a connection loss; -1 = reconnect forever")
    api_timeout: float = Field(5.0, gt=0, description="seconds to wait for a JetStream API or publish ack")
    lock_timeout: float = Field(30.0, gt=0, description="ack_wait of durables unimq creates, seconds")
    max_payload: int = Field(1024 * 1024, gt=8192, description="the server's max_payload (body + headers)")
    max_batch: int = Field(1000, ge=1, description="messages per pipelined publish")
    storage: Literal["file", "memory"] = "file"
    replicas: int = Field(1, ge=1, le=5)
    core_pending_limit: int = Field(65536, ge=1, description="core mode: buffered messages before drops")
    routing: Literal["header", "subjects"] = Field(
        "header", description="subjects = a routing subject is also the NATS subject (<destination>.<subject>) "
                              "and a group's durable filters on its pattern: native routing")

    @field_validator("token", "nkey_seed")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        register_secret(value)
        return value

    @model_validator(mode="after")
    def _routing_needs_own_streams(self) -> Self:
        """routing=subjects makes each destination's stream capture ``<destination>.>``: unimq must own it."""
        if self.routing == "subjects" and (self.stream or not self.jetstream):
            raise ConfigError("nats: routing=subjects needs JetStream and a stream per destination: "
                              "drop ?stream= / ?jetstream=false, or ?routing=subjects")
        return self
