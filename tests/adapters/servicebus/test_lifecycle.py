"""Consumer lifecycle on Service Bus (issue 32): a group opened before it was ensured, prompt close."""

from __future__ import annotations

import asyncio
import statistics
import time
import warnings

import pytest
from unimq_servicebus.options import ServiceBusOptions, endpoint

import unimq
from unimq.url import parse_options, parse_url


async def test_sessions_group_created_by_opening_a_consumer_receives(sb_url: str, name: str) -> None:
    """sessions=true, a group never ensured: opening the consumer creates the subscription (with
    sessions), so what is sent afterwards arrives, as on the backends that create groups on use."""
    async with unimq.connect(sb_url + "&sessions=true") as broker:
        try:
            async with asyncio.timeout(60), broker.consumer(name, "late") as consumer:
                await broker.producer(name).send(b"after open", key="k")
                delivery = await consumer.receive(timeout=15)
                assert delivery is not None, "the group created by opening a consumer never received"
                assert delivery.message.body == b"after open" and delivery.message.key == "k"
                await delivery.ack()
        finally:
            await broker.delete(name)


async def test_close_is_prompt_and_gives_held_messages_back(broker: unimq.Broker, name: str) -> None:
    """close() abandons what it holds (back at once, next attempt) and does not wait for the SDK's
    own close (about a second per receiver): well under the 100 ms target here, 250 ms with slack."""
    await broker.ensure(name)
    await broker.producer(name).send_many([b"held", b"second"])
    closes = []
    for _ in range(3):
        async with asyncio.timeout(30):
            consumer = await broker.consumer(name).open()
            delivery = await consumer.receive(timeout=10)
            assert delivery is not None
            started = time.monotonic()
            await consumer.close()
            closes.append(time.monotonic() - started)
    assert statistics.median(closes) < 0.25, f"close took {closes}"
    async with asyncio.timeout(30), broker.consumer(name) as consumer:
        got = await consumer.receive_batch(2, timeout=5)
        assert {d.message.body for d in got} <= {b"held", b"second"} and got
        assert max(d.attempt for d in got) >= 2, "a message held at close did not come back with its next attempt"
        await consumer.ack_many(got)


def _endpoint(url: str) -> object:
    parsed = parse_url(url)
    return endpoint(parsed, parse_options(ServiceBusOptions, "servicebus", dict(parsed.query)))


@pytest.mark.parametrize(("text", "part"), [
    ("SharedAccessKeyName=Root;SharedAccessKey=s3cr3t-KEY", "Endpoint"),
    ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root", "SharedAccessKey"),
    ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=s3cr3t-KEY", "SharedAccessKeyName"),
])
def test_connection_string_missing_a_part_names_it(text: str, part: str) -> None:
    from urllib.parse import quote

    with pytest.raises(unimq.ConfigError, match=part) as raised:
        _endpoint(f"servicebus://?connection_string={quote(text, safe='')}")
    assert "s3cr3t-KEY" not in str(raised.value)


def test_emulator_mode_on_a_public_host_warns_that_tls_is_off() -> None:
    with pytest.warns(UserWarning, match="disables TLS"):
        _endpoint("servicebus://RootManageSharedAccessKey:k@sb.example.com:5672?emulator=true")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for host in ("127.0.0.1", "localhost", "10.1.2.3", "servicebus-emulator"):
            _endpoint(f"servicebus://RootManageSharedAccessKey:k@{host}:5672?emulator=true")
