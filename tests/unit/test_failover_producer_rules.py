"""FailoverProducer's rules on memory:// (the real outage test is
tests/migration/test_failover_producer.py): the bound, the journal, switch_back, and which errors
fail a send instead of failing over."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

import unimq
from unimq import Producer
from unimq.errors import BrokerConnectionError, ConfigError, UnimqError
from unimq.message import Message
from unimq.migrate import FailoverProducer, Journal


class Outage:
    """A memory producer whose sends fail with ``error`` while it is set."""

    def __init__(self, real: Producer) -> None:
        self.real = real
        self.destination = real.destination
        self.capabilities = real.capabilities
        self.error: UnimqError | None = None
        self.attempts = 0

    def message(self, body: Any, **fields: Any) -> Message:
        return self.real.message(body, **fields)

    async def send(self, message: Message) -> Message:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        return await self.real.send(message)


async def test_fails_over_after_the_bound_journals_and_switches_back(tmp_path: Path) -> None:
    async with unimq.connect("memory://failover-a") as a, unimq.connect("memory://failover-b") as b:
        primary = Outage(a.producer("orders"))
        journal = Journal(tmp_path)
        failover = FailoverProducer(cast(Producer, primary), b.producer("orders"), journal,
                                    after=0.3, retry_every=0.05)
        one = await failover.send("one")
        primary.error = BrokerConnectionError("primary down")
        two = await failover.send("two")
        assert failover.active == "secondary"
        assert primary.attempts > 2, "the primary was not retried within the bound"
        attempts = primary.attempts
        three = await failover.send("three")
        assert primary.attempts == attempts, "a send went to the primary while failed over"
        assert [m.message_id for _, m in journal.pending()] == [two.message_id, three.message_id]
        primary.error = None
        failover.switch_back()
        four = await failover.send("four")
        assert [m.message_id for m in await a.peek("orders", 10)] == [one.message_id, four.message_id]
        assert [m.message_id for m in await b.peek("orders", 10)] == [two.message_id, three.message_id]


async def test_a_non_retryable_error_fails_the_send(tmp_path: Path) -> None:
    async with unimq.connect("memory://failover-c") as a, unimq.connect("memory://failover-d") as b:
        primary = Outage(a.producer("orders"))
        primary.error = ConfigError("wrong setting")
        await b.ensure("orders")
        failover = FailoverProducer(cast(Producer, primary), b.producer("orders"), tmp_path, after=0.0)
        with pytest.raises(ConfigError):
            await failover.send("x")
        assert failover.active == "primary"
        assert await b.peek("orders", 10) == []


@pytest.mark.parametrize("field", ["after", "send_timeout", "check_every"])
async def test_bad_durations_are_config_errors(tmp_path: Path, field: str) -> None:
    async with unimq.connect("memory://failover-e") as a:
        with pytest.raises(ConfigError, match=field):
            FailoverProducer(a.producer("x"), a.producer("y"), tmp_path, **cast(Any, {field: -1}))
