"""Acks reach the service promptly while the consumer's receive poll waits on the same receiver.

A settlement waits for its outcome by reading the socket; a receive poll reading at the same time
usually took the outcome, and the settlement then ran out the SDK's 0.2 s socket timeout before it
looked again. Settlements go one at a time per receiver, so 20 acks took 4 s: with a 2 s lock the
last half expired first and every one of those messages came again. Since: about 0.45 s.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from azure.servicebus.aio import ServiceBusClient

import unimq

MESSAGES = 20
LOCK = timedelta(seconds=2)
#: Before the fix: ~4 s (20 x 0.2 s). Since: ~0.45 s (20 x 20 ms plus round trips).
ACKED_WITHIN = 1.5


async def test_acks_are_not_held_back_by_the_receive_poll(
        broker: unimq.Broker, sdk: ServiceBusClient, name: str) -> None:
    await broker.ensure(name, lock_timeout=LOCK)
    await broker.producer(name).send_many([unimq.Message(body=b"%d" % i) for i in range(MESSAGES)])
    seen: list[bytes] = []
    async with sdk.get_queue_receiver(name) as peeker, broker.consumer(name, prefetch=MESSAGES) as consumer:
        async with asyncio.timeout(15):
            while len(seen) < MESSAGES:
                delivery = await consumer.receive(timeout=5)
                assert delivery is not None, f"only {len(seen)} of {MESSAGES} received"
                seen.append(delivery.message.body)
                await delivery.ack()  # queued: the core's batcher sends it in the background
            acked = time.monotonic()
            # The queue is empty: this receive's poll waits on the receiver while the acks go out,
            # and gets any message whose lock expired before its ack landed.
            again = asyncio.ensure_future(consumer.receive(timeout=LOCK.total_seconds() + 1))
            while (await peeker.peek_messages(max_message_count=MESSAGES, sequence_number=1)  # locked ones too
                   and time.monotonic() - acked < 5):
                await asyncio.sleep(0.02)
            took = time.monotonic() - acked
            redelivered = await again
    assert sorted(seen) == sorted(b"%d" % i for i in range(MESSAGES))
    assert redelivered is None, (f"{redelivered.message.body!r} came again (attempt {redelivered.attempt}): "
                                 "its ack landed after its 2 s lock")
    assert took < ACKED_WITHIN, f"{MESSAGES} acks took {took:.2f}s to reach the service behind a receive poll"
