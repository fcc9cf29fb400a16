"""Subscription rules in the double: the SQL subset the driver writes, evaluated when a topic fans a
message out, managed through ``$unimq-control`` and kept by a restart."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from proton import Message
from unimq_servicebus.admin import ControlAdmin, EntityOptions
from unimq_servicebus.mapping import rule_sql
from unimq_servicebus.options import Endpoint
from unimq_servicebus.testing.double import ServiceBusDouble
from unimq_servicebus.testing.double.codec import StoredMessage, split_sections
from unimq_servicebus.testing.double.entities import EntityConfig, Queue, ServiceBusError, Topic
from unimq_servicebus.testing.double.rules import SqlFilter

import unimq

SUBJECT = "x-unimq-subject"


def matches(sql: str | None, **properties: object) -> bool:
    return SqlFilter(sql).matches(properties)


@pytest.mark.parametrize(("pattern", "subject", "expected"), [
    ("orders.*.created", "orders.eu.created", True),
    ("orders.*.created", "orders.eu.paid", False),
    ("orders.#", "orders", True),
    ("orders.#", "orders.eu.x.y", True),
    ("orders.#", "billing.eu", False),
    ("#.created", "created", True),
    ("order_x.*", "order_x.eu", True),
    ("order_x.*", "orderAx.eu", False),  # '_' is escaped: not LIKE's one-character wildcard
])
def test_the_driver_s_like_filters(pattern: str, subject: str, expected: bool) -> None:
    assert matches(rule_sql(pattern, None), **{SUBJECT: subject}) is expected


def test_header_equality_quotes_and_brackets() -> None:
    sql = rule_sql(None, {"it's]": "o'k", "type": "refund"})
    assert sql == "[it's]]] = 'o''k' AND [type] = 'refund'"
    assert matches(sql, **{"it's]": "o'k", "TYPE": "refund"})  # property names are case-insensitive
    assert not matches(sql, **{"it's]": "o'k", "type": "Refund"})
    assert not matches(sql, type="refund"), "a missing property is unknown: no match"
    assert not matches("[n] = '5'", n=5), "a non-string value does not equal a string"


def test_like_with_and_without_escape() -> None:
    assert matches("[a] LIKE 'x%' ", a="xyz") and not matches("[a] like 'x_'", a="xyz")
    assert matches("[a] LIKE '100#%' ESCAPE '#'", a="100%") and not matches("[a] LIKE '100#%' ESCAPE '#'", a="1000")
    assert not matches("[a] LIKE '%'"), "LIKE on a missing property is unknown"
    assert matches(None), "no SQL: the TrueFilter"


@pytest.mark.parametrize(("sql", "named"), [
    ("type = 'x'", "'type'"),
    ("[a] = 1", "'1'"),
    ("[a] = 'x' OR [b] = 'y'", "'OR'"),
    ("NOT [a] = 'x'", "'NOT'"),
    ("sys.Label = 'x'", "'sys'"),
    ("[a] LIKE 'x' ESCAPE 'ab'", "'ab'"),
    ("[a] LIKE 'x!' ESCAPE '!'", "ends with its escape character"),
    ("[a] = 'x' AND", "ends where"),
    ("1=1", "'1'"),
    ("[a] = 'x' " + "AND [a] = 'x' " * 80, "longer than 1024"),
])
def test_anything_else_is_refused(sql: str, named: str) -> None:
    with pytest.raises(ValueError, match="the double implements only") as refused:
        SqlFilter(sql)
    assert named in str(refused.value)


def stored(**properties: str) -> StoredMessage:
    return StoredMessage(split_sections(Message(body=b"x", properties=properties).encode()))


def test_a_topic_copies_a_message_into_the_subscriptions_whose_rules_match() -> None:
    topic = Topic("t", EntityConfig())
    for name in ("all", "eu", "none"):
        topic.subscriptions[name] = Queue(f"t/Subscriptions/{name}", EntityConfig(), kind="subscription")
    eu = topic.subscriptions["eu"]
    eu.create_rule("eu", rule_sql("orders.eu.*", None))
    eu.delete_rule("$Default")
    topic.subscriptions["none"].delete_rule("$Default")
    for subject in ("orders.eu.created", "orders.us.created"):
        topic.enqueue(stored(**{SUBJECT: subject}), int(time.time() * 1000))
    assert [len(s.messages) for s in topic.subscriptions.values()] == [2, 1, 0], "no rule: nothing"
    eu.create_rule("us", rule_sql("orders.us.*", None))
    topic.enqueue(stored(**{SUBJECT: "orders.us.paid"}), int(time.time() * 1000))
    assert len(eu.messages) == 2, "one copy when any rule matches"
    with pytest.raises(ServiceBusError, match="exists with another filter"):
        eu.create_rule("us", rule_sql("orders.*", None))
    eu.create_rule("us", rule_sql("orders.us.*", None))  # the same rule again: fine
    with pytest.raises(ServiceBusError, match="does not exist"):
        eu.delete_rule("$Default")
    with pytest.raises(ServiceBusError, match="1 to 50 characters"):
        eu.create_rule("x" * 51, None)


def test_a_snapshot_from_before_rules_restores_the_default_rule() -> None:
    sub = Queue("t/Subscriptions/s", EntityConfig(), kind="subscription")
    sub.create_rule("mine", "[a] = 'b'")
    state = sub.snapshot()
    assert Queue.restore(state).rules.keys() == {"$Default", "mine"}
    del state["rules"]
    assert list(Queue.restore(state).rules) == ["$Default"]


@pytest.fixture
async def control(double: ServiceBusDouble) -> AsyncIterator[ControlAdmin]:
    admin = ControlAdmin(Endpoint(namespace="127.0.0.1", emulator=True, port=double.port), timeout=10)
    yield admin
    await admin.close()


async def receive_bodies(client: ServiceBusClient, topic: str, sub: str, count: int) -> list[str]:
    received: list[str] = []
    async with client.get_subscription_receiver(topic, sub, max_wait_time=1) as receiver:
        deadline = time.monotonic() + 5
        while len(received) < count and time.monotonic() < deadline:
            for message in await receiver.receive_messages(max_message_count=10, max_wait_time=0.5):
                received.append(str(message))
                await receiver.complete_message(message)
    return sorted(received)


async def test_rules_through_the_control_node(double: ServiceBusDouble, control: ControlAdmin,
                                              client: ServiceBusClient) -> None:
    await control.create_topic("t", EntityOptions(), ("eu", "all"))
    assert await control.rules("t", "eu") == {"$Default": None}
    await control.route("t", "eu", rule_sql("orders.eu.*", {"type": "refund"}))
    [(name, sql)] = (await control.rules("t", "eu")).items()
    assert name.startswith("unimq-") and sql == "[x-unimq-subject] LIKE 'orders.eu.%' ESCAPE '!' AND [type] = 'refund'"
    async with client.get_topic_sender("t") as sender:
        await sender.send_messages([
            ServiceBusMessage(f"{subject}/{kind}", application_properties={SUBJECT: subject, "type": kind})
            for subject in ("orders.eu.created", "orders.us.created") for kind in ("refund", "sale")])
    assert await receive_bodies(client, "t", "eu", 1) == ["orders.eu.created/refund"]
    assert len(await receive_bodies(client, "t", "all", 4)) == 4
    await control.route("t", "eu", None)
    assert await control.rules("t", "eu") == {"$Default": None}
    with pytest.raises(unimq.ConfigError, match="the double implements only"):
        await control.create_rule("t", "eu", "bad", "[a] = 'x' OR [b] = 'y'")
    with pytest.raises(unimq.NotFound):
        await control.rules("t", "nope")
    await control.delete_rule("t", "eu", "never-made")  # missing: not an error


async def test_route_keeps_another_true_filter_and_never_leaves_no_rule(double: ServiceBusDouble,
                                                                        control: ControlAdmin) -> None:
    double.configure_entity("t/Subscriptions/s")
    await control.delete_rule("t", "s", "$Default")
    await control.create_rule("t", "s", "$Default", "[a] = 'custom'")
    await control.create_rule("t", "s", "everything", None)
    await control.route("t", "s", None)
    assert await control.rules("t", "s") == {"everything": None}, "an existing TrueFilter is kept"
    await control.create_rule("t", "s", "$Default", "[a] = 'custom'")
    await control.delete_rule("t", "s", "everything")
    await control.route("t", "s", None)
    assert await control.rules("t", "s") == {"unimq-all": None}, "$Default is taken: the TrueFilter under another name"


def test_rules_survive_a_restart(tmp_path: Path) -> None:
    with ServiceBusDouble(port=0, data_dir=str(tmp_path)) as double:
        double.configure_entity("t/Subscriptions/s")
        double.call(lambda: double.broker.subscription("t/Subscriptions/s").create_rule("mine", "[a] = 'b'"))
        double.call(lambda: double.broker.subscription("t/Subscriptions/s").delete_rule("$Default"))
    with ServiceBusDouble(port=0, data_dir=str(tmp_path)) as double:
        rules = double.call(lambda: double.broker.subscription("t/Subscriptions/s").rules)
        assert {name: rule.sql for name, rule in rules.items()} == {"mine": "[a] = 'b'"}
