"""Choosing the client by URL, and options that belong to one client only (no broker needed)."""

from __future__ import annotations

import pytest
from unimq_kafka_confluent import ConfluentKafkaDriver, ConfluentKafkaOptions

import unimq
from unimq import registry


def test_client_confluent_selects_the_librdkafka_driver() -> None:
    assert registry.load("kafka", "confluent") is ConfluentKafkaDriver


async def test_client_not_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    without = {name: ep for name, ep in registry.installed().items() if name != "kafka+confluent"}
    monkeypatch.setattr(registry, "installed", lambda: without)
    with pytest.raises(unimq.ConfigError, match=r'pip install "unimq\[kafka-confluent\]"'):
        await unimq.connect("kafka://127.0.0.1:9092?client=confluent")


async def test_confluent_only_option_on_the_aiokafka_driver_is_refused() -> None:
    with pytest.raises(unimq.ConfigError, match="unknown option 'queued_max_messages_kbytes'"):
        await unimq.connect("kafka://127.0.0.1:9092?queued_max_messages_kbytes=1024")


async def test_unknown_option_on_the_confluent_driver_is_refused() -> None:
    with pytest.raises(unimq.ConfigError, match="unknown option 'max_poll_records'"):
        await unimq.connect("kafka://127.0.0.1:9092?client=confluent&max_poll_records=5")


def test_shared_options_reach_the_administration_client() -> None:
    """The aiokafka driver that administers topics gets every shared option, and none of librdkafka's."""
    opts = ConfluentKafkaOptions(client_id="app", linger_ms=9, queued_max_messages_kbytes=1024)
    shared = opts.aiokafka_options()
    assert (shared.client_id, shared.linger_ms) == ("app", 9)
    assert not hasattr(shared, "queued_max_messages_kbytes")


def test_security_options_use_librdkafka_names() -> None:
    opts = ConfluentKafkaOptions(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256",
                                 sasl_username="u", sasl_password="p", ssl_cafile="/ca.pem")
    assert opts.security_config() == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "u",
        "sasl.password": "p", "ssl.ca.location": "/ca.pem",
    }
