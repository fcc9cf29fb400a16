"""Azure Service Bus (the in-repo double here): plain azure-servicebus (aio) vs unimq, on the shared harness.

Defaults to what the adapter is judged on: 1 KiB bodies, batching on, one producer / consumer,
produce and consume. Raw side (what an SDK application at its best writes): one sender, messages
packed into size-aware ``ServiceBusMessageBatch`` objects sent one after another; one PEEK_LOCK
receiver with prefetch 500, ``receive_messages`` and ``complete_message`` for each message. unimq,
as an application would write it: ``send_many``; a consumer with prefetch 500 reading with
``receive_batch`` and settling with ``ack_many`` (batching on), or ``receive`` and ``ack`` (off).

Opening an AMQP link costs about 0.5 s with the SDK against the double, so both sides open their
sender when the destination is created (untimed) and consume is timed from the first message.
Every repetition uses a fresh queue, provisioned through the double's control node.

    .venv/bin/python benchmarks/servicebus_bench.py [--quick] [--url servicebus://...] [harness options]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
from azure.servicebus.exceptions import MessageSizeExceededError
from harness import Backend, Contender, Quota, UnimqContender, Workload, main
from unimq_servicebus.admin import ControlAdmin, EntityOptions
from unimq_servicebus.options import ServiceBusOptions, endpoint

from unimq.url import parse_options, parse_url

PREFETCH = 500
DEFAULTS = {"--sizes": "1024", "--batch": "on", "--concurrency": "1", "--ops": "produce,consume"}


class PlainSdk(Contender):
    name = "raw"

    def __init__(self, url: str) -> None:
        parsed = parse_url(url)
        self.endpoint = endpoint(parsed, parse_options(ServiceBusOptions, "servicebus", dict(parsed.query)))
        self.senders: dict[str, ServiceBusSender] = {}

    def client(self) -> str:
        return f"azure-servicebus {version('azure-servicebus')}"

    async def open(self) -> None:
        assert self.endpoint.connection_string, "the benchmark runs against the double (emulator=true)"
        self.sb = ServiceBusClient.from_connection_string(self.endpoint.connection_string)
        self.admin = ControlAdmin(self.endpoint)

    async def close(self) -> None:
        await self.admin.close()
        await self.sb.close()

    async def create(self, dest: str, w: Workload) -> None:
        await self.admin.create_queue(dest, EntityOptions())
        sender = self.sb.get_queue_sender(dest)
        await sender.__aenter__()
        self.senders[dest] = sender

    async def delete(self, dest: str) -> None:
        sender = self.senders.pop(dest, None)
        if sender is not None:
            await sender.close()
        await self.admin.delete(dest)

    async def produce(self, dest: str, payloads: list[bytes], batch: bool) -> None:
        sender = self.senders[dest]
        if not batch:
            for body in payloads:
                await sender.send_messages(ServiceBusMessage(body))
            return
        current = await sender.create_message_batch()
        for body in payloads:
            message = ServiceBusMessage(body)
            try:
                current.add_message(message)
            except MessageSizeExceededError:
                await sender.send_messages(current)
                current = await sender.create_message_batch()
                current.add_message(message)
        if len(current):
            await sender.send_messages(current)

    async def consume(self, dest: str, quota: Quota, batch: bool) -> None:
        async with self.sb.get_queue_receiver(dest, prefetch_count=PREFETCH) as receiver:
            while not quota.finished:
                for message in await receiver.receive_messages(max_message_count=PREFETCH, max_wait_time=1):
                    await receiver.complete_message(message)
                    quota.take()

    async def send_one(self, dest: str, body: bytes) -> None:
        await self.senders[dest].send_messages(ServiceBusMessage(body))

    async def receive_all(self, dest: str, on_body: Callable[[bytes], None]) -> None:
        async with self.sb.get_queue_receiver(dest, prefetch_count=PREFETCH) as receiver:
            while True:
                for message in await receiver.receive_messages(max_message_count=PREFETCH, max_wait_time=1):
                    on_body(b"".join(message.body))
                    await receiver.complete_message(message)


class Unimq(UnimqContender):
    async def create(self, dest: str, w: Workload) -> None:
        await super().create(dest, w)
        driver: Any = self.broker._driver
        await driver._sender(dest)  # open the link untimed, as the raw side does


def contenders(url: str) -> list[Contender]:
    return [PlainSdk(url), Unimq(url, prefetch=PREFETCH, receive_batch=PREFETCH)]


BACKEND = Backend(
    name="servicebus",
    default_url="servicebus://RootManageSharedAccessKey:SAS_KEY_VALUE@127.0.0.1:5673?emulator=true",
    contenders=contenders,
    quick_count=3_000,
    full_count=10_000,
    latency_rate=200.0,
    consume_from_first=True,
    run_timeout=60.0,
    notes=["against the in-repo double: it is one Python reactor thread, so it bounds both sides alike",
           "produce: size-aware ServiceBusMessageBatch, one send at a time per sender (raw and unimq)",
           "consume: PEEK_LOCK, prefetch 500; raw completes each message, unimq ack_many (batching on) or ack "
           "(off); timed from the first message",
           "senders opened untimed when the queue is created (SDK link setup ~0.5 s)"],
)

if __name__ == "__main__":
    for flag, value in DEFAULTS.items():
        if not any(arg == flag or arg.startswith(flag + "=") for arg in sys.argv[1:]):
            sys.argv += [flag, value]
    main(BACKEND)
