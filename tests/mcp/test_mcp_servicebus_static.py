"""The MCP tools against a Service Bus endpoint without the double's control node (the official
emulator's constraints: entities declared up front in its config file), issue 31."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from test_mcp_tools import call, client, receive_all
from unimq_servicebus.targets import pool

import unimq
from unimq.testing.brokers import require

pytestmark = [pytest.mark.timeout(120), pytest.mark.needs_broker("servicebus-static")]


@pytest.fixture
async def broker() -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(str(require("servicebus-static").url)) as connected:
        yield connected


async def test_tools_on_a_declared_queue(broker: unimq.Broker) -> None:
    dest = pool()[-1]  # the last queue of the conformance pool: emptied first, as the suite does
    await broker.purge(dest)
    async with client(broker, allow_write=True) as c:
        listed = await call(c, "list_destinations")  # 'listing' is none on an unmanaged endpoint: said so
        assert listed.error is not None and "listing" in listed.error
        sent = (await call(c, "send_message", destination=dest, body={"task": "resize"}, key="k1")).result
        peeked = (await call(c, "peek_messages", destination=dest, count=5)).result
        assert sent["message_id"] in [m["message_id"] for m in peeked]
        [got] = await receive_all(c, dest, 1, 15.0)
        assert got["message_id"] == sent["message_id"]
        health = (await call(c, "health")).result
        assert health["ok"] is True
        refused = await call(c, "destination_properties", destination=dest)
        assert refused.error is None or "Config.json" in refused.error or "config" in refused.error.lower()
