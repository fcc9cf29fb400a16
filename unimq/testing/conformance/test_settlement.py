"""Settlement and provisioning, as the core applies them on every backend: ``max_deliveries`` seen by
every process, every ``ensure()`` field honoured or refused, error classes, when a new group starts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import unimq
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import collect, dead_letters, expect_nothing, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio

#: One value per DestinationSpec field, and the capability flag that decides it.
ENSURE_FIELDS: list[tuple[str, Any, str]] = [
    ("partitions", 2, "partitions"),
    ("replication", 1, "replication"),
    ("fifo", True, "fifo"),
    ("sessions", True, "sessions"),
    ("retention", timedelta(hours=1), "retention"),
    ("lock_timeout", timedelta(seconds=30), "lock_timeout"),
    ("max_deliveries", 3, "max_deliveries"),
    ("deduplication", timedelta(minutes=1), "deduplication"),
    ("max_priority", 5, "priority"),
    ("dead_letter_expired", True, "dead_letter_expired"),
]


@pytest.mark.parametrize(("field", "value", "flag"), ENSURE_FIELDS, ids=[f[0] for f in ENSURE_FIELDS])
async def test_every_ensure_field_is_honoured_or_refused(broker: unimq.Broker, names: Names, field: str,
                                                         value: Any, flag: str) -> None:
    """A field whose capability is ``none`` is a CapabilityError naming it; any other is accepted."""
    dest = names()
    caps = broker.capabilities_for(dest)
    if not caps.supports(flag):
        with pytest.raises(unimq.CapabilityError, match=field):
            await broker.ensure(dest, **{field: value})
        return
    if names.pool:
        pytest.skip("entities on this target are declared up front; ensure() cannot change them")
    try:
        await broker.ensure(dest, **{field: value})
    except unimq.CapabilityError as exc:
        if field in str(exc) and "limit" not in str(exc):
            pytest.fail(f"{caps.backend} declares {flag!r} {getattr(caps, flag)} but refused {field}=: {exc}")
        raise


@pytest.mark.requires("dead_letter", "max_deliveries")
async def test_max_deliveries_is_enforced_by_a_process_that_did_not_ensure(
    unimq_url: str, broker: unimq.Broker, names: Names, timing: Timing,
) -> None:
    """ensure(max_deliveries=2) in one Broker; a second, fresh Broker's consumer dead-letters the poison."""
    dest, group = await queue(broker, names, max_deliveries=2)
    await broker.producer(dest).send(b"poison")
    async with asyncio.timeout(timing.receive):
        other = await unimq.connect(unimq_url)
    try:
        async with other.consumer(dest, group, lock_timeout=timing.lock) as consumer:
            nacked = 0
            while nacked < 2:
                delivery = await consumer.receive(timeout=timing.receive)
                assert delivery is not None, f"delivery {nacked + 1} of the poison message never came"
                nacked += 1
                await delivery.nack()
            await expect_nothing(consumer, timing, "a message past max_deliveries=2 must not be delivered again")
        got = await dead_letters(other, dest, 1, timing)
        assert got[0].message.body == b"poison"
    finally:
        await other.close()


@pytest.mark.requires("lock_timeout")
async def test_lock_timeout_from_ensure_applies_to_consumers(broker: unimq.Broker, names: Names,
                                                             timing: Timing) -> None:
    """ensure(lock_timeout=...) is the lock of consumers that do not set their own."""
    if names.pool:
        pytest.skip("entities on this target are declared up front; ensure() cannot change them")
    lock = timing.lock
    dest, group = await queue(broker, names, lock_timeout=timedelta(seconds=lock))
    await broker.producer(dest).send(b"held")
    async with broker.consumer(dest, group) as first:
        held = await first.receive(timeout=timing.receive)
        assert held is not None
        async with broker.consumer(dest, group) as second:
            again = await second.receive(timeout=lock + timing.receive)
            assert again is not None, f"not redelivered after the ensured lock_timeout of {lock:g}s"
            assert again.message.body == b"held"
            await again.ack()


async def test_stats_of_an_unknown_destination_is_not_found(broker: unimq.Broker, names: Names) -> None:
    if names.pool:
        pytest.skip("every name on this target exists up front")
    if not broker.capabilities.listing:
        pytest.skip("this backend keeps no registry of destinations (capability 'listing' is none)")
    with pytest.raises(unimq.NotFound):
        await broker.stats(f"{names()}-never-created")


async def test_wrong_password_is_an_authentication_error(unimq_url: str, names: Names, timing: Timing) -> None:
    """Credentials the broker refuses are AuthenticationError (a ConfigError, not retryable), everywhere."""
    parts = urlsplit(unimq_url)
    if not parts.password:
        pytest.skip("the target's URL carries no password: its broker runs without authentication here "
                    "(tests/reliability/test_security*.py cover secured brokers)")
    hosts = parts.netloc.rpartition("@")[2]  # one host or a cluster's list, kept as written
    netloc = f"{parts.username}:wrong-{parts.password}@{hosts}"
    wrong = urlunsplit(parts._replace(netloc=netloc))
    with pytest.raises(unimq.AuthenticationError) as raised:
        async with asyncio.timeout(timing.receive * 2):
            broker = await unimq.connect(wrong)
            try:
                await broker.producer(names()).send(b"x")
            finally:
                await broker.close()
    assert raised.value.retryable is False
    assert isinstance(raised.value, unimq.ConfigError)
    assert f"wrong-{parts.password}" not in str(raised.value)
    if parts.password != parts.username:  # guest:guest: the user name is shown, rightly
        assert parts.password not in str(raised.value)


async def test_a_new_group_starts_as_declared(broker: unimq.Broker, names: Names, timing: Timing) -> None:
    """``new_group_backlog``: native — a group created after a send still gets it; none — it does not."""
    caps = broker.capabilities_for(names.dest)
    if not caps.fanout:
        pytest.skip("no groups on this backend (capability 'fanout' is none)")
    dest = names.dest
    await broker.ensure(dest, groups=(names.group(),))
    await broker.producer(dest).send(b"before the group")
    late = names.group()
    async with broker.consumer(dest, late) as consumer:
        if caps.new_group_backlog:
            got = await collect(consumer, 1, timing)
            assert [d.message.body for d in got] == [b"before the group"]
        else:
            await expect_nothing(consumer, timing, "new_group_backlog is none, so a later group starts empty")
            await broker.producer(dest).send(b"after the group")
            got = await collect(consumer, 1, timing)
            assert [d.message.body for d in got] == [b"after the group"]


@pytest.mark.requires("dead_letter_expired", "message_ttl")
async def test_expired_messages_are_dead_lettered_when_asked(broker: unimq.Broker, names: Names,
                                                             timing: Timing) -> None:
    dest, group = await queue(broker, names, dead_letter_expired=True)
    await broker.producer(dest).send(b"too late", ttl=timing.ttl)
    await asyncio.sleep(timing.ttl + 0.5)
    async with broker.consumer(dest, group) as consumer:
        await expect_nothing(consumer, timing, "an expired message must not be delivered")
    got = await dead_letters(broker, dest, 1, timing)
    assert got[0].message.body == b"too late"
