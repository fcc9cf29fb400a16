"""Query parameters of ``kafka://...?client=confluent``: every aiokafka driver option, plus the
librdkafka ones below (which the aiokafka driver refuses as unknown, a ConfigError)."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from unimq_kafka.options import KafkaOptions


class ConfluentKafkaOptions(KafkaOptions):
    """``kafka://host:9092?client=confluent&queued_max_messages_kbytes=16384&...``."""

    max_batch_size: int = Field(
        1_000_000, ge=1024, description="bytes per record batch (librdkafka's default; 64 KiB batches cost it "
                                        "several times the CPU per record)"
    )
    queued_max_messages_kbytes: int = Field(
        16384, ge=1, description="librdkafka's per-consumer fetch queue (KiB), read ahead of prefetch"
    )
    batch_num_messages: int = Field(10000, ge=1, description="most records in one producer record batch")
    queue_buffering_max_messages: int = Field(
        1_000_000, ge=1, description="most records waiting in the producer; a fuller queue makes send wait"
    )

    def aiokafka_options(self) -> KafkaOptions:
        """The shared options, for the aiokafka driver that does this driver's administration (its
        producer only writes metadata records: it keeps aiokafka's own batch size)."""
        shared = set(KafkaOptions.model_fields) - {"max_batch_size"}
        return KafkaOptions.model_validate(self.model_dump(include=shared))

    def security_config(self) -> dict[str, Any]:
        """librdkafka's names for the security options."""
        config: dict[str, Any] = {"security.protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            config.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username or "",
                           "sasl.password": self.sasl_password or ""})
        if self.security_protocol in ("SSL", "SASL_SSL"):
            for key, value in (("ssl.ca.location", self.ssl_cafile), ("ssl.certificate.location", self.ssl_certfile),
                               ("ssl.key.location", self.ssl_keyfile), ("ssl.key.password", self.ssl_password)):
                if value is not None:
                    config[key] = value
        return config
