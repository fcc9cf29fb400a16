"""A disposition the client settles in the same frame still applies (regression: it was ignored).

The SDK (7.15) drains its link on close and releases buffered messages pre-settled; the double
used to skip such dispositions, leaving those messages locked until their lock expired.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from unimq_servicebus.testing.double import ServiceBusDouble


@pytest.fixture
def double() -> Iterator[ServiceBusDouble]:
    server = ServiceBusDouble(port=0).start()
    yield server
    server.stop()


async def test_buffered_messages_released_on_close(double: ServiceBusDouble) -> None:
    double.configure_entity("q", kind="queue", lock_duration=60)
    async with ServiceBusClient.from_connection_string(double.connection_string) as client:
        async with client.get_queue_sender("q") as sender:
            await sender.send_messages([ServiceBusMessage(b"a"), ServiceBusMessage(b"b"), ServiceBusMessage(b"c")])
        receiver = client.get_queue_receiver("q", prefetch_count=10)
        async with receiver:
            got = await receiver.receive_messages(max_message_count=1, max_wait_time=2)
            assert len(got) == 1
            await receiver.complete_message(got[0])
            deadline = time.monotonic() + 2
            while double.stats("q")["locked"] < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert double.stats("q")["locked"] == 2, "the other two were not prefetched"
        stats = double.stats("q")
    assert stats["locked"] == 0, stats
    assert stats["active"] == 2, stats
