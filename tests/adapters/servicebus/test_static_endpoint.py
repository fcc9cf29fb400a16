"""The adapter against an endpoint without the double's control node (issue 31).

A private double in static mode stands in for the official emulator: no ``$unimq-control`` node,
no entity created on first use, entities from the emulator's own Config.json format. The data path
must work there as on the full double; ensure/stats/delete say why they cannot, never retry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from unimq_servicebus.testing.double import ServiceBusDouble

import unimq
from unimq.testing.faultproxy import FaultProxy

CONFIG = Path(__file__).resolve().parents[3] / "scripts" / "servicebus-emulator-config.json"


@pytest.fixture
def static() -> Iterator[ServiceBusDouble]:
    double = ServiceBusDouble.from_config_file(str(CONFIG), port=0, static=True).start()
    yield double
    double.stop()


def url(double: ServiceBusDouble, port: int | None = None, query: str = "") -> str:
    return (f"servicebus://RootManageSharedAccessKey:SAS_KEY_VALUE@127.0.0.1:{port or double.port}"
            f"?emulator=true{query}")


@pytest.fixture
async def broker(static: ServiceBusDouble) -> AsyncIterator[unimq.Broker]:
    async with asyncio.timeout(10), unimq.connect(url(static)) as connected:
        yield connected


async def test_data_path_works_without_the_control_node(broker: unimq.Broker) -> None:
    """Send, receive, ack, nack with the next attempt, reject to the dead-letter queue: no management call."""
    producer = broker.producer("unimq-q1")
    await producer.send(b"one", headers={"h": "v"})
    await producer.send_many([b"two", b"three"])
    async with asyncio.timeout(30), broker.consumer("unimq-q1") as consumer:
        got: list[unimq.Delivery] = []
        while len(got) < 3:
            got += await consumer.receive_batch(3 - len(got), timeout=5)
        by_body = {d.message.body: d for d in got}
        assert set(by_body) == {b"one", b"two", b"three"} and by_body[b"one"].message.headers["h"] == "v"
        await by_body[b"one"].nack()
        await consumer.ack_many([by_body[b"two"], by_body[b"three"]])
        again = await consumer.receive(timeout=5)
        assert again is not None and again.message.body == b"one" and again.attempt == 2
        await again.reject(reason="no good")
    async with asyncio.timeout(30), broker.consumer(broker.dead_letter_destination("unimq-q1")) as dead:
        got = await dead.receive(timeout=5)
        assert got is not None and got.message.body == b"one"
        await got.ack()


async def test_management_says_why_it_cannot(broker: unimq.Broker) -> None:
    """ensure() of a declared entity passes; settings, stats, delete and listing are CapabilityErrors
    naming the config file, at once (no ConnectionError, no retries)."""
    caps = broker.capabilities
    assert not caps.fanout and not caps.lock_timeout and not caps.listing and not caps.deduplication
    assert "Config.json" in caps.fanout.note
    started = time.monotonic()
    await broker.ensure("unimq-q1")
    with pytest.raises(unimq.NotFound, match="not-declared"):
        await broker.ensure("not-declared")
    with pytest.raises(unimq.CapabilityError):
        await broker.ensure("unimq-q1", lock_timeout=10)
    for call in (broker.stats("unimq-q1"), broker.delete("unimq-q1")):
        with pytest.raises(unimq.CapabilityError, match=r"Config\.json"):
            await call
    with pytest.raises(unimq.CapabilityError, match="listing"):
        await broker.destinations()
    assert time.monotonic() - started < 5, "a management refusal took retries"


async def test_undeclared_entity_is_not_found(broker: unimq.Broker) -> None:
    with pytest.raises(unimq.UnimqError) as raised:
        async with asyncio.timeout(30):
            await broker.producer("not-declared").send(b"x")
    assert "not-declared" in str(raised.value)
    assert isinstance(raised.value, unimq.NotFound) or isinstance(raised.value.__cause__, unimq.NotFound)


async def test_a_session_entity_is_read_as_one_without_management(broker: unimq.Broker,
                                                                  static: ServiceBusDouble) -> None:
    """No ?sessions=true and no way to read the entity's properties: the refused plain receiver says
    it needs sessions, and the consumer reads it with session receivers."""
    async with unimq.connect(url(static, query="&sessions=true")) as keyed:
        await keyed.producer("unimq-session").send_many([unimq.Message(b"a", key="k1"),
                                                        unimq.Message(b"b", key="k1")])
    async with asyncio.timeout(30), broker.consumer("unimq-session") as consumer:
        got = [await consumer.receive(timeout=10) for _ in range(2)]
        assert [d.message.body for d in got if d] == [b"a", b"b"]
        assert {d.message.key for d in got if d} == {"k1"}
        for delivery in got:
            assert delivery is not None
            await delivery.ack()


async def test_sessions_option_on_an_entity_without_sessions_names_it(static: ServiceBusDouble) -> None:
    async with (unimq.connect(url(static, query="&sessions=true")) as broker, asyncio.timeout(30),
                broker.consumer("unimq-q2") as consumer):
        with pytest.raises(unimq.ConfigError, match=r"unimq-q2.*does not require sessions"):
            await consumer.receive(timeout=8)


async def test_a_send_the_broker_never_settles_times_out(static: ServiceBusDouble) -> None:
    """The broker goes silent after the sender opened: the send fails within the timeout, naming the entity."""
    async with (FaultProxy("127.0.0.1", static.port) as proxy,
                unimq.connect(url(static, proxy.port, "&operation_timeout=1")) as broker):
        producer = broker.producer("unimq-q3")
        await producer.send(b"fine")
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(unimq.UnimqError) as raised:
            async with asyncio.timeout(30):
                await producer.send(b"never settled")
        assert time.monotonic() - started < 20
        assert "unimq-q3" in str(raised.value)
        assert isinstance(raised.value, unimq.Timeout | unimq.PublishError)
        await proxy.heal()


def test_static_double_loads_the_emulator_config_format(static: ServiceBusDouble) -> None:
    document = json.loads(CONFIG.read_text())
    declared = {q["Name"] for q in document["UserConfig"]["Namespaces"][0]["Queues"]}
    listed = {e["name"] for e in static.list_entities()}
    assert declared <= listed
    assert static.stats("unimq-dedup")["config"]["duplicate_detection_window"] == 60
    assert static.stats("unimq-session")["config"]["requires_session"] is True
    assert static.stats("unimq-t1/Subscriptions/unimq-s1")["config"]["lock_duration"] == 60
