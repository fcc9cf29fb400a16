"""Query parameters of ``kafka://`` URLs, validated by pydantic (unknown ones are a ConfigError)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class KafkaOptions(BaseModel):
    """``kafka://h1:9092,h2:9092?client_id=app&acks=all&security_protocol=SASL_SSL&...``.

    Credentials may also be given as URL userinfo (``kafka://user:pass@host:9092``), which sets
    ``sasl_username``/``sasl_password``.
    """

    model_config = ConfigDict(extra="forbid")

    client_id: str = "unimq"
    # Producer
    acks: Literal["all", "-1", "1", "0"] = Field("all", description="'all' (default) waits for every in-sync replica")
    enable_idempotence: bool = Field(True, description="idempotent producer; requires acks=all")
    linger_ms: int = Field(5, ge=0, description="how long the producer waits to fill a batch")
    max_batch_size: int = Field(65536, ge=1024, description="bytes per partition batch")
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    max_request_size: int = Field(1048576, ge=65536, description="largest produce request; bounds the message size")
    request_timeout_ms: int = Field(40000, ge=1000)
    # Consumer
    session_timeout_ms: int = Field(10000, ge=1000)
    heartbeat_interval_ms: int = Field(1000, ge=100)
    max_poll_interval_ms: int = Field(300000, ge=1000, description="also the rebalance timeout")
    fetch_max_wait_ms: int = Field(100, ge=0, description="longest a fetch waits on the broker for data")
    commit_interval_ms: int = Field(100, ge=1, description="how often acknowledged offsets are committed")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a group without committed offsets starts when the consumer gives no start="
    )
    # Topics
    auto_create: bool = Field(True, description="consumers create missing topics; false → NotFound")
    partitions: int | None = Field(
        None, ge=1, description="partitions of topics unimq creates when ensure() gives none; None = num.partitions"
    )
    replication: int | None = Field(
        None, ge=1, description="replication factor of created topics; None = default.replication.factor"
    )
    # Security
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = Field(None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = Field(None, repr=False)

    @model_validator(mode="after")
    def _coherent(self) -> KafkaOptions:
        if self.enable_idempotence and self.acks not in ("all", "-1"):
            raise ValueError(f"acks={self.acks} needs enable_idempotence=false (idempotence requires acks=all)")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be lower than session_timeout_ms")
        return self

    @property
    def producer_acks(self) -> int | str:
        return "all" if self.acks in ("all", "-1") else int(self.acks)
