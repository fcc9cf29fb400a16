"""The double's static mode and the official emulator's Config.json format."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("proton")

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import MessagingEntityNotFoundError
from unimq_servicebus.testing.double import ServiceBusDouble
from unimq_servicebus.testing.double.entities import Broker, emulator_config, iso_seconds

CONFIG = Path(__file__).resolve().parents[2] / "scripts" / "servicebus-emulator-config.json"


def emulator(queues: list[dict[str, object]], topics: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {"UserConfig": {"Namespaces": [{"Name": "ns", "Queues": queues, "Topics": topics or []}]}}


@pytest.mark.parametrize(("text", "seconds"), [("PT30S", 30), ("PT1M", 60), ("PT1H", 3600), ("P14D", 14 * 86400),
                                               ("PT0.5S", 0.5), ("P1DT2H3M4S", 93784)])
def test_iso_durations(text: str, seconds: float) -> None:
    assert iso_seconds(text) == seconds


def test_emulator_config_becomes_entity_options() -> None:
    broker = Broker(static=True)
    broker.load_config(emulator(
        [{"Name": "q", "Properties": {"LockDuration": "PT5S", "MaxDeliveryCount": 3, "RequiresSession": True,
                                      "RequiresDuplicateDetection": True,
                                      "DuplicateDetectionHistoryTimeWindow": "PT20S",
                                      "DefaultMessageTimeToLive": "P10675199DT2H48M5.4775807S",
                                      "AutoDeleteOnIdle": "P10675199DT2H48M5.4775807S"}}],
        [{"Name": "t", "Properties": {"AutoDeleteOnIdle": "PT5M"},
          "Subscriptions": [{"Name": "s", "Properties": {"LockDuration": "PT1M"}}]}]))
    config = broker.stats("q")["config"]
    assert config == {"lock_duration": 5, "max_delivery_count": 3, "requires_session": True,
                      "duplicate_detection_window": 20, "default_ttl": None,
                      "dead_lettering_on_message_expiration": False, "auto_delete_on_idle": None}
    assert broker.stats("t")["config"]["auto_delete_on_idle"] == 300
    assert broker.stats("t/Subscriptions/s")["config"]["lock_duration"] == 60


@pytest.mark.parametrize("bad", [
    emulator([{"Name": "q", "Properties": {"ForwardTo": "elsewhere"}}]),
    emulator([{"Name": "q", "Properties": {"MaxSizeInMegabytes": 1024}}]),
    emulator([], [{"Name": "t", "Subscriptions": [{"Name": "s", "Rules": [{"Name": "r"}]}]}]),
    {"UserConfig": {"Namespaces": []}},
])
def test_what_the_double_does_not_model_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        emulator_config(bad)


def test_static_needs_a_config() -> None:
    done = subprocess.run([sys.executable, "-m", "unimq_servicebus.testing.double", "--port", "0", "--static"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and "--static needs --config" in done.stderr


@pytest.fixture
def static() -> Iterator[ServiceBusDouble]:
    double = ServiceBusDouble.from_config_file(str(CONFIG), port=0, static=True).start()
    yield double
    double.stop()


async def test_static_mode_creates_nothing_on_first_use(static: ServiceBusDouble) -> None:
    before = len(static.list_entities())
    async with ServiceBusClient.from_connection_string(static.connection_string, retry_total=0) as client:
        with pytest.raises(MessagingEntityNotFoundError):
            async with client.get_queue_sender("undeclared") as sender:
                await sender.send_messages(ServiceBusMessage(b"x"))
        with pytest.raises(MessagingEntityNotFoundError):
            async with client.get_subscription_receiver("unimq-t1", "undeclared") as receiver:
                await receiver.receive_messages(max_wait_time=1)
        async with client.get_topic_sender("unimq-t1") as sender:
            await sender.send_messages(ServiceBusMessage(b"fan"))
        async with client.get_subscription_receiver("unimq-t1", "unimq-s2", max_wait_time=2) as receiver:
            [got] = await receiver.receive_messages(max_wait_time=2)
            assert str(got) == "fan"
            await receiver.complete_message(got)
    assert len(static.list_entities()) == before
