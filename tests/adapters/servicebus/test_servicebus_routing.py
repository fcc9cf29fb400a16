"""Native routing on Service Bus: a consumer with ``subject=``/``headers=`` leaves its group's
subscription one SQL rule, so Service Bus copies in only what matches; one without a filter
restores ``$Default``. Depths come from the subscription's own count (``stats``): what the broker
enqueued, before any consumer-side filtering."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, ResourceExistsError, ResourceNotFoundError
from azure.servicebus.management import CorrelationRuleFilter, SqlRuleFilter, TrueRuleFilter
from unimq_servicebus.admin import AzureAdmin, rule_name
from unimq_servicebus.driver import MAX_RULE_SQL, ServiceBusDriver
from unimq_servicebus.mapping import rule_sql
from unimq_servicebus.options import ServiceBusOptions
from unimq_servicebus.testing.double import ServiceBusDouble

import unimq
from unimq.url import parse_options, parse_url

SUBJECTS = ("orders.eu.created", "orders.us.created", "orders.eu.paid", "billing.eu.created")
CONFIG = Path(__file__).resolve().parents[3] / "scripts" / "servicebus-emulator-config.json"


async def narrow(broker: unimq.Broker, dest: str, group: str, subject: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
    """Open and close a consumer of ``group``: the rule it leaves is what the test checks."""
    async with broker.consumer(dest, group, subject=subject, headers=headers):
        pass


async def send_subjects(broker: unimq.Broker, dest: str) -> None:
    producer = broker.producer(dest)
    for subject in SUBJECTS:
        await producer.send(subject.encode(), subject=subject)


async def depth(broker: unimq.Broker, dest: str, group: str | None) -> int | None:
    return (await broker.stats(dest, group)).depth


async def take(consumer: unimq.Consumer, count: int) -> list[bytes]:
    """``count`` bodies (acked), then nothing more within half a second."""
    bodies: list[bytes] = []
    async with asyncio.timeout(15):
        while len(bodies) < count:
            got = await consumer.receive(timeout=5)
            assert got is not None, f"got {bodies}, expected {count}"
            bodies.append(got.message.body)
            await got.ack()
    assert await consumer.receive(timeout=0.5) is None
    return sorted(bodies)


async def test_two_groups_with_patterns_get_exactly_their_share(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name, groups=("eu", "created", "all"))
    await narrow(broker, name, "eu", "orders.eu.*")
    await narrow(broker, name, "created", "#.created")
    await send_subjects(broker, name)
    assert (await depth(broker, name, "eu"), await depth(broker, name, "created"),
            await depth(broker, name, "all")) == (2, 3, 4), "Service Bus enqueued only each group's share"
    async with broker.consumer(name, "eu", subject="orders.eu.*") as eu, \
            broker.consumer(name, "created", subject="#.created") as created:
        assert await take(eu, 2) == [b"orders.eu.created", b"orders.eu.paid"]
        assert await take(created, 3) == [b"billing.eu.created", b"orders.eu.created", b"orders.us.created"]


async def test_header_filters_and_quoting(broker: unimq.Broker, name: str) -> None:
    """A header value with a quote and a key with a bracket go through the SQL quoting intact; the
    pattern's '_' is escaped (LIKE's one-character wildcard would let 'orderAx' in)."""
    await broker.ensure(name, groups=("refunds", "odd"))
    await narrow(broker, name, "refunds", headers={"type": "refund"})
    await narrow(broker, name, "odd", "order_x.*", headers={"k]ey": "it's"})
    producer = broker.producer(name)
    await producer.send_many([
        unimq.Message(b"refund", headers={"type": "refund"}), unimq.Message(b"sale", headers={"type": "sale"}),
        unimq.Message(b"untyped"),
    ])
    await producer.send(b"match", subject="order_x.eu", headers={"k]ey": "it's"})
    await producer.send(b"wildcard", subject="orderAx.eu", headers={"k]ey": "it's"})
    await producer.send(b"other value", subject="order_x.eu", headers={"k]ey": "its"})
    assert await depth(broker, name, "refunds") == 1
    assert await depth(broker, name, "odd") == 1
    async with broker.consumer(name, "odd", subject="order_x.*", headers={"k]ey": "it's"}) as odd:
        assert await take(odd, 1) == [b"match"]


async def test_messages_follow_the_rule_in_force_when_they_were_enqueued(broker: unimq.Broker,
                                                                         name: str) -> None:
    """Narrowing does not remove what the subscription holds; widening does not bring back what it
    was not given. A consumer without a filter restores $Default and reads everything it holds."""
    await broker.ensure(name, groups=("g",))
    await send_subjects(broker, name)  # $Default: all four
    await narrow(broker, name, "g", "billing.#")
    await send_subjects(broker, name)  # one more
    assert await depth(broker, name, "g") == 5
    async with broker.consumer(name, "g") as everything:
        assert len(await take(everything, 5)) == 5
        await send_subjects(broker, name)  # $Default again: all four
        assert len(await take(everything, 4)) == 4


async def test_the_last_consumer_to_open_decides(broker: unimq.Broker, name: str, sb_url: str) -> None:
    await broker.ensure(name, groups=("g",))
    await narrow(broker, name, "g", "orders.eu.*")
    await narrow(broker, name, "g", "billing.#")
    await send_subjects(broker, name)
    assert await depth(broker, name, "g") == 1, "the second pattern replaced the first"
    async with unimq.connect(sb_url) as elsewhere:
        await narrow(elsewhere, name, "g")  # another process, no filter: everything again
    await send_subjects(broker, name)
    assert await depth(broker, name, "g") == 5


async def test_a_queue_is_filtered_by_the_core(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name)
    await send_subjects(broker, name)
    async with broker.consumer(name, subject="orders.eu.*") as consumer:
        assert await take(consumer, 2) == [b"orders.eu.created", b"orders.eu.paid"]
    assert await depth(broker, name, None) == 0, "what the group did not want was acked"


async def test_an_invalid_pattern_is_a_config_error(broker: unimq.Broker, name: str) -> None:
    await broker.ensure(name, groups=("g",))
    with pytest.raises(unimq.ConfigError, match="'!'"):
        broker.consumer(name, "g", subject="orders.!")
    with pytest.raises(unimq.ConfigError, match="headers"):
        broker.consumer(name, "g", headers={"type": 1})  # type: ignore[dict-item]


def test_the_capability_says_where_routing_is_native(broker: unimq.Broker) -> None:
    routing = broker.capabilities.routing
    assert routing.support == "native"
    assert "topic subscriptions" in routing.note and "queues (group=None)" in routing.note


@pytest.fixture
def static() -> Iterator[ServiceBusDouble]:
    double = ServiceBusDouble.from_config_file(str(CONFIG), port=0, static=True).start()
    yield double
    double.stop()


@pytest.fixture
async def static_broker(static: ServiceBusDouble) -> AsyncIterator[unimq.Broker]:
    url = f"servicebus://RootManageSharedAccessKey:SAS_KEY_VALUE@127.0.0.1:{static.port}?emulator=true"
    async with asyncio.timeout(10), unimq.connect(url) as connected:
        yield connected


async def test_static_mode_is_filtered_by_the_core(static_broker: unimq.Broker) -> None:
    """No control node, no rules: the subscription gets everything and the consumer filters."""
    assert static_broker.capabilities.routing.support == "emulated"
    await send_subjects(static_broker, "unimq-t1")
    async with static_broker.consumer("unimq-t1/Subscriptions/unimq-s1", subject="#.created") as consumer:
        assert await take(consumer, 3) == [b"billing.eu.created", b"orders.eu.created", b"orders.us.created"]


# Unit tests: the Azure administration path (not testable against the double) with a fake client.


class FakeAdministrationClient:
    """The part of ``ServiceBusAdministrationClient`` that AzureAdmin's rule calls use."""

    def __init__(self, rules: dict[str, Any]) -> None:
        self.rules = dict(rules)
        self.calls: list[tuple[str, ...]] = []

    def list_rules(self, topic: str, subscription: str) -> AsyncIterator[Any]:
        async def listed() -> AsyncIterator[Any]:
            for rule_name_, rule_filter in list(self.rules.items()):
                yield SimpleNamespace(name=rule_name_, filter=rule_filter)
        return listed()

    async def create_rule(self, topic: str, subscription: str, rule: str, *, filter: Any) -> None:
        self.calls.append(("create", rule, type(filter).__name__, filter.sql_expression))
        if rule in self.rules:
            raise ResourceExistsError(f"rule {rule} exists")
        self.rules[rule] = filter

    async def delete_rule(self, topic: str, subscription: str, rule: str) -> None:
        self.calls.append(("delete", rule))
        if self.rules.pop(rule, None) is None:
            raise ResourceNotFoundError(f"rule {rule} does not exist")


def azure_admin(client: FakeAdministrationClient) -> AzureAdmin:
    admin = AzureAdmin.__new__(AzureAdmin)
    admin._client = client  # type: ignore[assignment]
    return admin


async def test_azure_admin_adds_the_rule_before_removing_the_others() -> None:
    client = FakeAdministrationClient({"$Default": TrueRuleFilter()})
    admin = azure_admin(client)
    sql = rule_sql("orders.*.created", {"type": "refund"})
    assert sql == "[x-unimq-subject] LIKE 'orders.%.created' ESCAPE '!' AND [type] = 'refund'"
    await admin.route("t", "g", sql)
    assert client.calls == [("create", rule_name(sql), "SqlRuleFilter", sql), ("delete", "$Default")]
    assert await admin.rules("t", "g") == {rule_name(sql): sql}
    client.calls.clear()
    await admin.route("t", "g", sql)
    assert client.calls == [], "the same filter again: nothing to change"
    await admin.route("t", "g", None)
    assert client.calls == [("create", "$Default", "TrueRuleFilter", "1=1"), ("delete", rule_name(sql))]
    assert await admin.rules("t", "g") == {"$Default": None}


async def test_azure_admin_replaces_foreign_rules_and_tolerates_races() -> None:
    sql = rule_sql("billing.#", None)
    assert sql is not None
    client = FakeAdministrationClient({"$Default": CorrelationRuleFilter(label="x"), "legacy": SqlRuleFilter("a=1"),
                                       rule_name(sql): SqlRuleFilter(sql)})
    admin = azure_admin(client)
    assert (await admin.rules("t", "g"))["$Default"] == "<CorrelationRuleFilter>"
    await admin.route("t", "g", sql)
    assert client.calls == [("delete", "$Default"), ("delete", "legacy")]
    client.calls.clear()
    await admin.route("t", "g", None)
    assert client.calls[0] == ("create", "$Default", "TrueRuleFilter", "1=1")
    await admin.create_rule("t", "g", "$Default", None)  # exists already (another process): not an error
    await admin.delete_rule("t", "g", "gone")  # missing: not an error


class RefusingAdmin:
    """Stands in for the driver's Admin: ``route()`` (all the driver calls here) fails with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.routed: list[str | None] = []

    async def route(self, topic: str, group: str, sql: str | None) -> None:
        self.routed.append(sql)
        raise self.error


def driver_with(admin: RefusingAdmin) -> ServiceBusDriver:
    parsed = parse_url("servicebus://k:v@127.0.0.1:1?emulator=true")
    driver = ServiceBusDriver(parsed, parse_options(ServiceBusOptions, "servicebus", dict(parsed.query)))
    driver._admin = admin  # type: ignore[assignment]
    return driver


async def test_without_the_manage_claim_the_core_filters_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    denied = ClientAuthenticationError("401 Unauthorized")
    admin = RefusingAdmin(denied)
    driver = driver_with(admin)
    with caplog.at_level(logging.WARNING, "unimq.servicebus"):
        await driver.route_group("t", "g", "[a] = 'b'")
        await driver.route_group("t", "g", "[a] = 'c'")
    assert admin.routed == ["[a] = 'b'", "[a] = 'c'"]
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "cannot set subscription rules" in caplog.records[0].message


async def test_other_rule_failures_fail_the_consumer_and_long_filters_stay_in_the_core() -> None:
    with pytest.raises(unimq.Timeout):
        await driver_with(RefusingAdmin(unimq.Timeout("no answer"))).route_group("t", "g", "[a] = 'b'")
    admin = RefusingAdmin(unimq.CapabilityError("no rules here"))
    await driver_with(admin).route_group("t", "g", rule_sql(None, {"k": "v" * MAX_RULE_SQL}))
    assert admin.routed == [None], "too long for a rule: the TrueFilter, the core filters"
