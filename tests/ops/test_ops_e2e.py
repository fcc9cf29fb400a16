"""The assistant's loop, end to end: send work → a worker fails some (dead-lettered) → inspect the dead
letters → fix and redrive → wait for every result. The assistant only uses MCP tools (the official
client, in process, so the worker shares memory://); the worker is ``broker.consume``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import pytest
from mcp import Client

import unimq
from unimq.mcp import Policy, build_server
from unimq.reliability import Retry
from unimq.testing.brokers import TARGETS

pytestmark = pytest.mark.timeout(120)


class Broken(Exception):
    """What the worker raises for a job it cannot do yet; not worth retrying."""


async def tool(c: Client, name: str, **arguments: Any) -> Any:
    r = await c.call_tool(name, arguments)
    assert not r.is_error, " ".join(getattr(b, "text", "") for b in r.content)
    data = r.structured_content
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.needs_broker(n)) for n in ("memory", "servicebus")])
async def test_assistant_sends_work_inspects_failures_redrives_and_waits(name: str, broker_url: Any) -> None:
    wait = next(t.timing for t in TARGETS if t.name == name).receive
    url = f"memory://e2e-{uuid.uuid4().hex[:8]}" if name == "memory" else broker_url(name)
    work = f"e2e-{uuid.uuid4().hex[:8]}"
    results = f"{work}-results"
    fixed = asyncio.Event()

    async def worker(delivery: unimq.Delivery) -> None:
        job = json.loads(delivery.message.body)
        if job["size"] > 100 and not fixed.is_set():
            raise Broken(f"image too large: {job['size']} px")
        reply = delivery.message.reply_to
        assert reply is not None
        await broker.producer(reply).send(json.dumps({"done": job["id"]}).encode(),
                                          correlation_id=delivery.message.correlation_id)

    async with unimq.connect(url) as broker:
        for each in (work, results):
            await broker.ensure(each, dead_letter=True)
        stop = asyncio.Event()
        running = asyncio.create_task(broker.consume(work, worker, retry=Retry(give_up_on=Broken), stop=stop,
                                                     handle_signals=False))
        try:
            async with Client(build_server(broker, Policy(allow_write=True, max_wait=wait))) as c:
                sizes = {"a": 10, "b": 500, "c": 20, "d": 900}
                for job, size in sizes.items():
                    await tool(c, "send_message", destination=work, body={"id": job, "size": size},
                               message_id=f"job-{job}", correlation_id=f"c-{job}", reply_to=results)

                for job in ("a", "c"):
                    done = await tool(c, "wait_for", destination=results, correlation_id=f"c-{job}", timeout=wait)
                    assert done["met"] and json.loads(done["reply"]["body"]) == {"done": job}, done
                failed = await tool(c, "wait_for", destination=work, dead_letters_at_least=2, timeout=wait)
                assert failed["met"], failed

                letters = await tool(c, "list_dead_letters", destination=work)
                assert sorted(d["message_id"] for d in letters) == ["job-b", "job-d"]
                assert all("image too large" in d["reason"] for d in letters), letters

                fixed.set()  # the assistant "deploys the fix", then sends the failed work back
                moved = await tool(c, "redrive_dead_letters", destination=work)
                assert (moved["moved"], moved["failed"]) == (2, 0), moved
                for job in ("b", "d"):
                    done = await tool(c, "wait_for", destination=results, correlation_id=f"c-{job}", timeout=wait)
                    assert done["met"] and json.loads(done["reply"]["body"]) == {"done": job}, done
                assert await tool(c, "list_dead_letters", destination=work) == []
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running, 30)
            if name != "memory":
                for each in (work, results):
                    await broker.delete(each)
